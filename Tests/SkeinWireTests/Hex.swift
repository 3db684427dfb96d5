import NIOCore

/// Hex helpers, so tests read like the byte listings in RELAY-PROTOCOL.md.
extension ByteBuffer {
    /// Bytes from a listing such as `"04 00 04 65 63 68 6f"`; spaces and newlines are ignored.
    init(hex: String) {
        self.init(bytes: hexBytes(hex))
    }

    /// The readable bytes as lowercase hex pairs separated by spaces.
    var hex: String {
        readableBytesView.map(hexPair).joined(separator: " ")
    }
}

func hexBytes(_ hex: String) -> [UInt8] {
    let digits = hex.unicodeScalars.filter { !$0.properties.isWhitespace }.map { Character($0) }
    precondition(digits.count.isMultiple(of: 2), "odd number of hex digits in \(hex)")
    return stride(from: 0, to: digits.count, by: 2).map { i in
        UInt8(String(digits[i...i + 1]), radix: 16)!
    }
}

func hexPair(_ byte: UInt8) -> String {
    let s = String(byte, radix: 16)
    return s.count == 1 ? "0" + s : s
}

/// The UTF-8 bytes of `text` as hex pairs.
func hexOf(_ text: String) -> String {
    text.utf8.map(hexPair).joined(separator: " ")
}

/// `count` bytes counting up from 0 (mod 256), for chunk payloads.
func pattern(_ count: Int, seed: UInt8 = 0) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.reserveCapacity(count)
    for i in 0..<count { buffer.writeInteger(UInt8(truncatingIfNeeded: i) &+ seed) }
    return buffer
}

func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }
