#ifndef CMICROHTTPD_H
#define CMICROHTTPD_H
#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <microhttpd.h>

/// Starts a daemon serving on an already bound, listening socket, with one
/// thread per connection. MHD_start_daemon is variadic, which Swift cannot
/// call; this fixes the option list in one place.
struct MHD_Daemon *cmhd_start(int listen_fd,
                              unsigned int connection_limit,
                              unsigned int connection_timeout_seconds,
                              MHD_AccessHandlerCallback handler, void *handler_cls,
                              MHD_RequestCompletedCallback completed, void *completed_cls);

/// The value of a request header, or NULL.
const char *cmhd_header(struct MHD_Connection *connection, const char *name);
#endif
