// SwiftPM renames an executable's entry point and points `main` at it, which would leave
// libFuzzer's own `main` unused: so this one hands control to libFuzzer's driver, looked up at
// run time (RTLD_DEFAULT, a nil handle on glibc) to call it with the C calling convention.

#if canImport(Glibc)
import Glibc
#endif

typealias Argv = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
typealias FuzzCallback = @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
typealias RunDriver = @convention(c) (UnsafeMutablePointer<CInt>, UnsafeMutablePointer<Argv>, FuzzCallback) -> CInt

func runFuzzer() -> CInt {
    guard let symbol = dlsym(nil, "LLVMFuzzerRunDriver") else {
        fatalError("LLVMFuzzerRunDriver not found: build with -sanitize=fuzzer (Fuzz/run)")
    }
    var argc = CommandLine.argc
    var argv: Argv = CommandLine.unsafeArgv
    _ = fuzzInitialize(&argc, &argv)
    return unsafeBitCast(symbol, to: RunDriver.self)(&argc, &argv, { fuzzOneInput($0, $1) })
}

exit(runFuzzer())
