#include "CMicroHTTPD.h"
#include <stdio.h>
#include <string.h>

/* Leaves the URL as sent: the router splits the path on '/' first and then
   decodes each segment, so an escaped '/' (%2F) stays inside its segment. */
static size_t cmhd_keep_escaped(void *cls, struct MHD_Connection *connection, char *text) {
    (void)cls;
    (void)connection;
    return strlen(text);
}

/* Formats one of libmicrohttpd's messages for the Swift side, without the
   trailing newline. */
static void cmhd_log(void *cls, const char *format, va_list arguments) {
    const struct cmhd_log_target *target = cls;
    char message[512];
    int length = vsnprintf(message, sizeof message, format, arguments);
    if (length < 0) return;
    size_t end = strlen(message);
    while (end > 0 && message[end - 1] == '\n') message[--end] = '\0';
    target->callback(target->cls, format, message);
}

struct MHD_Daemon *cmhd_start(int listen_fd, struct cmhd_limits limits,
                              MHD_AccessHandlerCallback handler, void *handler_cls,
                              MHD_RequestCompletedCallback completed, void *completed_cls,
                              MHD_NotifyConnectionCallback notify, void *notify_cls,
                              const struct cmhd_log_target *log) {
    return MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
            MHD_USE_ERROR_LOG,
        0, NULL, NULL, handler, handler_cls,
        /* First, so that no message goes to libmicrohttpd's own logger. */
        MHD_OPTION_EXTERNAL_LOGGER, cmhd_log, (void *)log,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket)listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, limits.connection_limit,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, limits.per_ip_connection_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, limits.connection_timeout_seconds,
        MHD_OPTION_NOTIFY_COMPLETED, completed, completed_cls,
        MHD_OPTION_NOTIFY_CONNECTION, notify, notify_cls,
        MHD_OPTION_UNESCAPE_CALLBACK, cmhd_keep_escaped, NULL,
        MHD_OPTION_END);
}

const char *cmhd_header(struct MHD_Connection *connection, const char *name) {
    return MHD_lookup_connection_value(connection, MHD_HEADER_KIND, name);
}

int cmhd_connection_fd(struct MHD_Connection *connection) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info ? info->connect_fd : -1;
}

void cmhd_set_connection_timeout(struct MHD_Connection *connection, unsigned int seconds) {
    MHD_set_connection_option(connection, MHD_CONNECTION_OPTION_TIMEOUT, seconds);
}
