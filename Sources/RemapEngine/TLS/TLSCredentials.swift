import CGnuTLS
import CURing
import Glibc
import RemapCore

/// What NBD over TCP is served with: pre-shared keys (the `username:hexkey`
/// file of `psktool`, `nbdkit --tls-psk` and qemu's `tls-creds-psk`) or an
/// X.509 certificate (a directory as qemu's `tls-creds-x509` and `nbdkit
/// --tls-certificates` use). Loaded into GnuTLS once, at start, so a
/// missing or malformed file stops remapd before it serves anything.
///
/// Immutable after init: GnuTLS lets many sessions on many threads share a
/// credentials structure and a priority cache once they are set up.
public final class TLSCredentials: @unchecked Sendable {  // GnuTLS handles, read-only after init
    private enum Kind {
        case psk(gnutls_psk_server_credentials_t)
        case certificate(gnutls_certificate_credentials_t, verifyPeer: Bool)
    }

    private let kind: Kind
    private let priority: gnutls_priority_t
    /// One line for the start log: what a client must present.
    public let summary: String
    /// What an operator should fix, said once at start.
    public let warnings: [String]

    /// Protocol versions the NBD spec asks for (1.2 and later), and for PSK
    /// the key exchanges that use the key (with ephemeral Diffie-Hellman
    /// first). The server's order decides the cipher, AES-GCM before
    /// ChaCha20: Debian 12's libnbd offers ChaCha20 first, which cut TLS
    /// throughput to a third on a server with AES instructions (bench/TLS.md),
    /// and the server carries every client's traffic.
    private static let certificatePriority = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"
        + ":-CHACHA20-POLY1305:+CHACHA20-POLY1305:%SERVER_PRECEDENCE"
    private static let pskPriority = certificatePriority + ":+ECDHE-PSK:+DHE-PSK:+PSK"
    /// Keys shorter than this are refused: a short key is a guessable password.
    static let minimumKeyBytes = 16

    /// Pre-shared keys from `file`, one `username:hexkey` per line. GnuTLS
    /// reads the file again at each handshake, so keys can be added or
    /// revoked without a restart; it must stay valid at its path.
    public init(pskFile file: String) throws(RemapError) {
        let users = try Self.pskUsers(inFile: file)
        var credentials: gnutls_psk_server_credentials_t?
        try Self.check(gnutls_psk_allocate_server_credentials(&credentials), "allocating PSK credentials")
        guard let credentials else { throw .internal("GnuTLS returned no PSK credentials") }
        let loaded = gnutls_psk_set_server_credentials_file(credentials, file)
        // ECDHE-PSK needs nothing more; DHE-PSK needs a group, and these are RFC 7919's.
        let groups = gnutls_psk_set_server_known_dh_params(credentials, GNUTLS_SEC_PARAM_MEDIUM)
        do throws(RemapError) {
            try Self.check(loaded, "--nbd-tls-psk \(file)")
            try Self.check(groups, "setting Diffie-Hellman groups")
            priority = try Self.priority(Self.pskPriority)
        } catch {
            gnutls_psk_free_server_credentials(credentials)
            throw error
        }
        kind = .psk(credentials)
        summary = "TLS pre-shared keys from \(file) (\(users.count) user\(users.count == 1 ? "" : "s"))"
        warnings = Self.exposure(of: file).map { ["\(file) is readable by \($0): anyone who reads it can use NBD (chmod 600 it)"] } ?? []
    }

    /// An X.509 certificate from `directory`: `server-cert.pem` and
    /// `server-key.pem`, `ca-cert.pem` (required with `verifyPeer`: client
    /// certificates must be signed by it) and optionally `ca-crl.pem`.
    public init(certificateDirectory directory: String, verifyPeer: Bool) throws(RemapError) {
        let ca = directory + "/ca-cert.pem", crl = directory + "/ca-crl.pem"
        let cert = directory + "/server-cert.pem", key = directory + "/server-key.pem"
        for file in [cert, key] + (verifyPeer ? [ca] : []) {
            guard access(file, R_OK) == 0 else {
                throw .invalidArgument("--nbd-tls-certificates: cannot read \(file): \(String(cString: strerror(errno)))")
            }
        }
        var credentials: gnutls_certificate_credentials_t?
        try Self.check(gnutls_certificate_allocate_credentials(&credentials), "allocating certificate credentials")
        guard let credentials else { throw .internal("GnuTLS returned no certificate credentials") }
        do throws(RemapError) {
            if access(ca, R_OK) == 0 {
                let count = gnutls_certificate_set_x509_trust_file(credentials, ca, GNUTLS_X509_FMT_PEM)
                try Self.check(count, "--nbd-tls-certificates: \(ca)")
                guard count > 0 else { throw .invalidArgument("--nbd-tls-certificates: no certificate in \(ca)") }
            }
            if access(crl, R_OK) == 0 {
                try Self.check(gnutls_certificate_set_x509_crl_file(credentials, crl, GNUTLS_X509_FMT_PEM),
                               "--nbd-tls-certificates: \(crl)")
            }
            try Self.check(gnutls_certificate_set_x509_key_file(credentials, cert, key, GNUTLS_X509_FMT_PEM),
                           "--nbd-tls-certificates: \(cert) with \(key)")
            try Self.check(gnutls_certificate_set_known_dh_params(credentials, GNUTLS_SEC_PARAM_MEDIUM),
                           "setting Diffie-Hellman groups")
            priority = try Self.priority(Self.certificatePriority)
        } catch {
            gnutls_certificate_free_credentials(credentials)
            throw error
        }
        kind = .certificate(credentials, verifyPeer: verifyPeer)
        summary = "TLS with the X.509 certificate in \(directory)"
            + (verifyPeer ? ", client certificates verified against \(ca)" : "")
        var warnings: [String] = []
        if let who = Self.exposure(of: key) { warnings.append("\(key) is readable by \(who) (chmod 600 it)") }
        if !verifyPeer {
            warnings.append("NBD clients on TCP are not authenticated (traffic is encrypted, but any client may connect): "
                            + "add --nbd-tls-verify-peer to require client certificates signed by \(ca)")
        }
        self.warnings = warnings
    }

    deinit {
        gnutls_priority_deinit(priority)
        switch kind {
        case .psk(let credentials): gnutls_psk_free_server_credentials(credentials)
        case .certificate(let credentials, _): gnutls_certificate_free_credentials(credentials)
        }
    }

    /// A server session on the non-blocking socket `fd`, not yet shaken
    /// hands; the caller owns it (`gnutls_deinit`).
    func makeSession(socket fd: Int32) throws(RemapError) -> gnutls_session_t {
        var made: gnutls_session_t?
        try Self.check(gnutls_init(&made, UInt32(GNUTLS_SERVER) | UInt32(GNUTLS_NONBLOCK) | UInt32(GNUTLS_NO_SIGNAL)),
                       "starting a TLS session")
        guard let session = made else { throw .internal("GnuTLS returned no session") }
        do throws(RemapError) {
            try Self.check(gnutls_priority_set(session, priority), "setting TLS priorities")
            switch kind {
            case .psk(let credentials):
                try Self.check(gnutls_credentials_set(session, GNUTLS_CRD_PSK, UnsafeMutableRawPointer(credentials)),
                               "setting PSK credentials")
            case .certificate(let credentials, let verifyPeer):
                try Self.check(gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, UnsafeMutableRawPointer(credentials)),
                               "setting certificate credentials")
                if verifyPeer {
                    // No certificate, or one the CA did not sign, fails the handshake.
                    gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUIRE)
                    gnutls_session_set_verify_cert(session, nil, 0)
                }
            }
        } catch {
            gnutls_deinit(session)
            throw error
        }
        gnutls_transport_set_int2(session, fd, fd)
        return session
    }

    /// The user names of a PSK file, after checking every line is
    /// `username:hexkey` with a key of at least `minimumKeyBytes`.
    static func pskUsers(inFile file: String) throws(RemapError) -> [String] {
        guard let stream = fopen(file, "re") else {
            throw .invalidArgument("--nbd-tls-psk: cannot read \(file): \(String(cString: strerror(errno)))")
        }
        defer { fclose(stream) }
        var text: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&chunk, 1, chunk.count, stream)
            if count == 0 { break }
            text += chunk.prefix(count)
            guard text.count <= 1 << 20 else { throw .invalidArgument("--nbd-tls-psk: \(file) is over 1 MiB") }
        }
        return try pskUsers(String(decoding: text, as: UTF8.self), file: file)
    }

    static func pskUsers(_ text: String, file: String) throws(RemapError) -> [String] {
        var users: [String] = []
        // By scalars: as Characters, "\r\n" is one and would not split on "\n".
        for (index, scalars) in text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = String(String.UnicodeScalarView(scalars))
            if line.isEmpty { continue }
            let fail = { (why: String) -> RemapError in
                .invalidArgument("--nbd-tls-psk: \(file) line \(index + 1): \(why) (expected USERNAME:HEXKEY, as psktool writes)")
            }
            // GnuTLS reads the key up to the newline: a carriage return would be part of it.
            guard !line.unicodeScalars.contains("\r") else { throw fail("a carriage return (CRLF line ends)") }
            guard let colon = line.firstIndex(of: ":") else { throw fail("no ':'") }
            let user = line[..<colon], key = line[line.index(after: colon)...]
            guard !user.isEmpty else { throw fail("empty user name") }
            guard !key.isEmpty, key.count % 2 == 0, key.allSatisfy(\.isHexDigit) else {
                throw fail("the key is not an even number of hex digits")
            }
            guard key.count / 2 >= minimumKeyBytes else {
                throw fail("the key has \(key.count / 2) bytes; at least \(minimumKeyBytes) are needed (psktool makes 32)")
            }
            users.append(String(user))
        }
        guard !users.isEmpty else { throw .invalidArgument("--nbd-tls-psk: \(file) has no key") }
        return users
    }

    /// "group", "others" or "group and others" when `file` is readable beyond its owner.
    private static func exposure(of file: String) -> String? {
        var status = stat()
        guard stat(file, &status) == 0 else { return nil }
        switch (status.st_mode & S_IRGRP != 0, status.st_mode & S_IROTH != 0) {
        case (true, true): return "group and others"
        case (true, false): return "its group"
        case (false, true): return "others"
        case (false, false): return nil
        }
    }

    private static func priority(_ text: String) throws(RemapError) -> gnutls_priority_t {
        var made: gnutls_priority_t?
        try check(gnutls_priority_init(&made, text, nil), "TLS priority string \(text)")
        guard let made else { throw .internal("GnuTLS returned no priority cache") }
        return made
    }

    /// GnuTLS reports failure as a negative code with a message of its own.
    private static func check(_ code: Int32, _ context: String) throws(RemapError) {
        guard code < 0 else { return }
        throw .invalidArgument("\(context): \(String(cString: gnutls_strerror(code)))")
    }
}

/// A GnuTLS error code as text, for logs.
func tlsErrorText(_ code: Int) -> String {
    String(cString: gnutls_strerror(Int32(truncatingIfNeeded: code)))
}
