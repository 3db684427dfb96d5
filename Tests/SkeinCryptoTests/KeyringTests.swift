import Testing
@testable import SkeinCrypto
