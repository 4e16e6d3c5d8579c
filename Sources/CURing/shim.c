#include "CURing.h"
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

unsigned curing_peek_cqes(struct io_uring *ring, struct io_uring_cqe **cqes, unsigned max) {
    return io_uring_peek_batch_cqe(ring, cqes, max);
}

int curing_submit_and_wait(struct io_uring *ring, long long timeout_ns) {
    struct io_uring_cqe *cqe = NULL;
    if (timeout_ns <= 0) {
        return io_uring_submit_and_wait(ring, 1) < 0 ? -errno : 0;
    }
    struct __kernel_timespec ts = {
        .tv_sec = timeout_ns / 1000000000LL,
        .tv_nsec = timeout_ns % 1000000000LL,
    };
    int rc = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);
    return rc < 0 ? rc : 0;
}

unsigned long curing_blkgetsize64(void) { return BLKGETSIZE64; }

int curing_enable_rings(struct io_uring *ring) {
    long rc = syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    return rc < 0 ? -errno : 0;
}
