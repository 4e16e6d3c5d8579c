#ifndef CMICROHTTPD_H
#define CMICROHTTPD_H
#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <microhttpd.h>

/// libmicrohttpd's error messages, formatted (its logger takes a va_list,
/// which Swift cannot read). `format` is the message's format string: the
/// same for every message of one kind.
typedef void (*cmhd_log_callback)(void *cls, const char *format, const char *message);

/// Where libmicrohttpd's messages go; owned by the caller, alive as long as
/// the daemon.
struct cmhd_log_target {
    cmhd_log_callback callback;
    void *cls;
};

/// The bounds of one daemon.
struct cmhd_limits {
    /// Connections at once; one more is closed at once (thread-per-
    /// connection mode polls the listening socket even at the limit).
    unsigned int connection_limit;
    /// Connections from one IP address at once (more are closed at once);
    /// 0 for none (a unix socket has no address).
    unsigned int per_ip_connection_limit;
    /// Seconds a connection may make no progress before it is closed.
    unsigned int connection_timeout_seconds;
};

/// Starts a daemon serving on an already bound, listening socket, with one
/// thread per connection. MHD_start_daemon is variadic, which Swift cannot
/// call; this fixes the option list in one place.
struct MHD_Daemon *cmhd_start(int listen_fd, struct cmhd_limits limits,
                              MHD_AccessHandlerCallback handler, void *handler_cls,
                              MHD_RequestCompletedCallback completed, void *completed_cls,
                              MHD_NotifyConnectionCallback notify, void *notify_cls,
                              const struct cmhd_log_target *log);

/// The value of a request header, or NULL.
const char *cmhd_header(struct MHD_Connection *connection, const char *name);

/// The connection's socket, or -1 (MHD_get_connection_info is variadic).
int cmhd_connection_fd(struct MHD_Connection *connection);

/// Sets the connection's no-progress timeout (MHD_set_connection_option is
/// variadic). Only from the connection's own thread.
void cmhd_set_connection_timeout(struct MHD_Connection *connection, unsigned int seconds);
#endif
