import Glibc
import RemapCore

/// Numbers of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
enum NBD {
    static let initMagic: UInt64 = 0x4e42_444d_4147_4943  // "NBDMAGIC"
    static let optionMagic: UInt64 = 0x4948_4156_454f_5054  // "IHAVEOPT"
    static let optionReplyMagic: UInt64 = 0x0003_e889_0455_65a9
    static let requestMagic: UInt32 = 0x2560_9513
    static let simpleReplyMagic: UInt32 = 0x6744_6698

    /// Handshake flags (server) and client flags.
    static let flagFixedNewstyle: UInt16 = 1 << 0
    static let flagNoZeroes: UInt16 = 1 << 1
    static let clientFlagFixedNewstyle: UInt32 = 1 << 0
    static let clientFlagNoZeroes: UInt32 = 1 << 1

    enum Option: UInt32 {
        case exportName = 1, abort = 2, list = 3, peekExport = 4, startTLS = 5, info = 6, go = 7
        case structuredReply = 8, listMetaContext = 9, setMetaContext = 10, extendedHeaders = 11
    }

    enum Reply: UInt32 {
        case ack = 1, server = 2, info = 3, metaContext = 4
        case errorUnsupported = 0x8000_0001, errorPolicy = 0x8000_0002, errorInvalid = 0x8000_0003
        case errorPlatform = 0x8000_0004, errorTLSRequired = 0x8000_0005, errorUnknown = 0x8000_0006
        case errorShutdown = 0x8000_0007, errorBlockSizeRequired = 0x8000_0008, errorTooBig = 0x8000_0009
    }

    enum Info: UInt16 {
        case export = 0, name = 1, description = 2, blockSize = 3
    }

    /// Transmission flags.
    static let transmitHasFlags: UInt16 = 1 << 0
    static let transmitReadOnly: UInt16 = 1 << 1
    static let transmitSendFlush: UInt16 = 1 << 2
    static let transmitSendFUA: UInt16 = 1 << 3
    static let transmitSendTrim: UInt16 = 1 << 5
    static let transmitSendWriteZeroes: UInt16 = 1 << 6
    static let transmitSendDF: UInt16 = 1 << 7
    static let transmitCanMultiConn: UInt16 = 1 << 8
    static let transmitSendCache: UInt16 = 1 << 10
    static let transmitSendFastZero: UInt16 = 1 << 11

    enum Command: UInt16 {
        case read = 0, write = 1, disconnect = 2, flush = 3, trim = 4, cache = 5, writeZeroes = 6, blockStatus = 7

        /// The `command` label in /metrics.
        var metricName: String {
            switch self {
            case .read: return "read"
            case .write: return "write"
            case .disconnect: return "disconnect"
            case .flush: return "flush"
            case .trim: return "trim"
            case .cache: return "cache"
            case .writeZeroes: return "write_zeroes"
            case .blockStatus: return "block_status"
            }
        }
    }

    /// Command flags.
    static let commandFUA: UInt16 = 1 << 0
    static let commandNoHole: UInt16 = 1 << 1
    static let commandDF: UInt16 = 1 << 2
    static let commandReqOne: UInt16 = 1 << 3
    static let commandFastZero: UInt16 = 1 << 4

    static let structuredReplyMagic: UInt32 = 0x668e_33ef
    static let replyFlagDone: UInt16 = 1 << 0

    enum ReplyType: UInt16 {
        case none = 0, offsetData = 1, offsetHole = 2, blockStatus = 5
        case error = 0x8001, errorOffset = 0x8002
    }

    /// The one metadata context remap serves, and its id on the wire.
    static let allocationContext = "base:allocation"
    static let allocationContextID: UInt32 = 1
    static let stateHole: UInt32 = 1 << 0
    static let stateZero: UInt32 = 1 << 1
    static let structuredHeaderSize = 20

    /// Error values on the wire (they are not the host's errno numbers).
    enum Error: UInt32 {
        case permission = 1, io = 5, noMemory = 12, invalid = 22, noSpace = 28, overflow = 75
        case notSupported = 95, shutdown = 108

        /// The errno name, for logs and metrics.
        var name: String {
            switch self {
            case .permission: return "EPERM"
            case .io: return "EIO"
            case .noMemory: return "ENOMEM"
            case .invalid: return "EINVAL"
            case .noSpace: return "ENOSPC"
            case .overflow: return "EOVERFLOW"
            case .notSupported: return "ENOTSUP"
            case .shutdown: return "ESHUTDOWN"
            }
        }
    }

    static let requestHeaderSize = 28
    static let simpleReplyHeaderSize = 16
    static let optionHeaderSize = 16
    /// The largest READ or WRITE served (and advertised as the maximum block size).
    static let maximumPayload = 32 * 1024 * 1024
    /// Option data larger than this is refused; names are at most 4096 bytes.
    static let maximumOptionLength = 64 * 1024
}

/// A transmission-phase request header, decoded.
struct NBDRequest: Equatable {
    var flags: UInt16
    var type: UInt16
    var cookie: UInt64
    var offset: UInt64
    var length: UInt32
}

/// Big-endian reading and writing of the protocol's integers.
struct WireReader {
    let base: UnsafeRawPointer
    var position = 0

    init(_ base: UnsafeRawPointer) { self.base = base }

    mutating func u16() -> UInt16 { defer { position += 2 }; return UInt16(bigEndian: base.loadUnaligned(fromByteOffset: position, as: UInt16.self)) }
    mutating func u32() -> UInt32 { defer { position += 4 }; return UInt32(bigEndian: base.loadUnaligned(fromByteOffset: position, as: UInt32.self)) }
    mutating func u64() -> UInt64 { defer { position += 8 }; return UInt64(bigEndian: base.loadUnaligned(fromByteOffset: position, as: UInt64.self)) }
    mutating func bytes(_ count: Int) -> [UInt8] {
        defer { position += count }
        return Array(UnsafeRawBufferPointer(start: base + position, count: count))
    }
}

struct WireWriter {
    private(set) var bytes: [UInt8] = []

    init(capacity: Int = 32) { bytes.reserveCapacity(capacity) }

    mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func append<S: Sequence>(_ data: S) where S.Element == UInt8 { bytes.append(contentsOf: data) }
}

extension NBDRequest {
    static func decode(_ base: UnsafeRawPointer) -> (request: NBDRequest, magic: UInt32) {
        var reader = WireReader(base)
        let magic = reader.u32()
        let request = NBDRequest(flags: reader.u16(), type: reader.u16(), cookie: reader.u64(), offset: reader.u64(), length: reader.u32())
        return (request, magic)
    }
}

/// Writes a simple reply header into `base` (16 bytes).
func encodeSimpleReply(into base: UnsafeMutableRawPointer, error: UInt32, cookie: UInt64) {
    base.storeBytes(of: NBD.simpleReplyMagic.bigEndian, toByteOffset: 0, as: UInt32.self)
    base.storeBytes(of: error.bigEndian, toByteOffset: 4, as: UInt32.self)
    base.storeBytes(of: cookie.bigEndian, toByteOffset: 8, as: UInt64.self)
}

/// An option reply: magic, option, type, length, data.
func encodeOptionReply(option: UInt32, reply: NBD.Reply, data: [UInt8] = []) -> [UInt8] {
    var writer = WireWriter(capacity: 20 + data.count)
    writer.u64(NBD.optionReplyMagic)
    writer.u32(option)
    writer.u32(reply.rawValue)
    writer.u32(UInt32(data.count))
    writer.append(data)
    return writer.bytes
}

extension RemapError {
    /// The NBD error a client sees for a failure: the one table from remap's
    /// errors (those of the I/O surface above all, see `VolumeIO`) to NBD's.
    var nbdError: NBD.Error {
        switch self {
        case .noSpace: return .noSpace
        // A host filesystem full under a sparse supplier is space, not I/O.
        case .io(let errno, _) where errno == ENOSPC: return .noSpace
        // A fast zero the suppliers could only do by writing zeros.
        case .io(let errno, _) where errno == EOPNOTSUPP: return .notSupported
        case .invalidArgument, .notFound, .shrinkNotAllowed: return .invalid
        case .inUse: return .permission
        case .alreadyExists, .io, .internal, .poolUnavailable, .supplierFailed: return .io
        }
    }
}
