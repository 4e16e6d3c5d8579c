#ifndef CURING_H
#define CURING_H
#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <linux/falloc.h>
#include <linux/fs.h>

/// Fills `cqes` with up to `max` ready completions without waiting and returns
/// how many; exists because io_uring_for_each_cqe is a macro Swift cannot call.
unsigned curing_peek_cqes(struct io_uring *ring, struct io_uring_cqe **cqes, unsigned max);

/// Waits for at least one completion, at most `timeout_ns` nanoseconds
/// (0 = no limit), after submitting what is queued. Returns 0, -ETIME or -errno.
int curing_submit_and_wait(struct io_uring *ring, long long timeout_ns);

/// Enables a ring created with IORING_SETUP_R_DISABLED; the calling thread
/// becomes its issuer. liburing 2.3 declares io_uring_enable_rings but does
/// not export it. Returns 0 or -errno.
int curing_enable_rings(struct io_uring *ring);

/// The ioctl request number for a block device's size; a macro built from
/// _IOR, which Swift cannot see.
unsigned long curing_blkgetsize64(void);
#endif
