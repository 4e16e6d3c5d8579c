import Glibc
import RemapCore
import RemapLog

/// NBD_OPT_STARTTLS. A connection accepted with credentials is in the
/// spec's FORCEDTLS mode: before TLS, every option but STARTTLS and ABORT
/// is answered NBD_REP_ERR_TLS_REQD (EXPORT_NAME, which cannot be answered
/// with an error, closes the connection). A connection without credentials
/// (the unix socket, whose file mode is its credential, and TCP under
/// --nbd-insecure) refuses STARTTLS with NBD_REP_ERR_POLICY.
///
/// At STARTTLS the ACK goes out in plaintext; once it is sent, the socket
/// goes to a `TLSTunnel` thread and `fd` becomes the plaintext end of the
/// tunnel, so the handshake and transmission code run unchanged over TLS.
extension NBDConnection {
    enum TLSState { case off, starting, on }

    /// Whether option `code` may be handled now; if not, the client has
    /// been answered (or dropped) already.
    func admitBeforeTLS(_ code: UInt32) -> Bool {
        guard credentials != nil, tlsState == .off else { return true }
        switch NBD.Option(rawValue: code) {
        case .startTLS, .abort:
            return true
        case .exportName:
            protocolError("EXPORT_NAME before STARTTLS (this listener requires TLS)")
            return false
        default:
            optionError(code, .errorTLSRequired, "this server requires TLS: send NBD_OPT_STARTTLS first")
            return false
        }
    }

    func handleStartTLS(_ code: UInt32, _ data: [UInt8]) {
        guard credentials != nil else {
            return optionError(code, .errorPolicy, "TLS is offered only on the TCP listener given TLS credentials")
        }
        guard data.isEmpty else { return optionError(code, .errorInvalid, "STARTTLS takes no data") }
        guard tlsState == .off else { return optionError(code, .errorInvalid, "TLS is already on") }
        // The client must wait for this reply before its TLS handshake:
        // anything after the option would be read as plaintext.
        guard available == 0 else { return protocolError("data after STARTTLS before its reply") }
        // Nothing negotiated before TLS survives it (the spec's rule; in
        // FORCEDTLS mode nothing could have been).
        structuredReplies = false
        allocationContextFor = nil
        tlsState = .starting
        send(encodeOptionReply(option: code, reply: .ack))
    }

    static let tunnelFailures = LogThrottle()

    /// Hands the socket to a TLS tunnel once the ACK is sent; called when
    /// the reply queue empties during `.starting`, with no receive armed.
    func startTLSTunnel() {
        guard let credentials else { return }
        do {
            fd = try TLSTunnel.start(socket: fd, credentials: credentials, below: server.descriptorCeiling)
        } catch {
            // Once per minute, not once per client: a shortage refuses many.
            Self.tunnelFailures.log(.notice, "cannot start TLS", "NBD client dropped: cannot start TLS: \(error)")
            return drop()
        }
        tlsState = .on
        receive()
    }
}
