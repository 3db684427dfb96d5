# The two commands of the README:
#   make demo   installs what is missing, builds, starts a dev relay and shows every pattern
#   make test   installs what is missing, builds, checks that a package can depend on Skein by
#               URL and version (Tests/Consumer/run), runs the whole test suite, then 20 s of
#               fuzzing of every decoder that reads bytes from another relay (Fuzz/run)
SHELL := /bin/bash
SWIFT ?= swift

.PHONY: deps test-deps build demo test release clean

# libsodium and OpenSSL's libcrypto (through pkg-config) are the system libraries Skein needs. The tests that run
# relays in network namespaces need iproute2, nftables and python3 (the healing LAN's driver).
deps:
	@if ! pkg-config --exists libsodium libcrypto 2>/dev/null; then \
		echo "installing libsodium-dev, libssl-dev and pkg-config"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libsodium-dev libssl-dev pkg-config >/dev/null; \
	fi

test-deps: deps
	@if ! command -v nft >/dev/null || ! command -v ip >/dev/null || ! command -v python3 >/dev/null; then \
		echo "installing iproute2, nftables and python3"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq iproute2 nftables python3 >/dev/null; \
	fi

build: deps
	$(SWIFT) build --product skein

release: deps
	$(SWIFT) build -c release --product skein

demo: build
	Examples/demo.sh .build/debug/skein

# Five passes, so load never competes with tests that time a reply or a failure detector:
# the unit and in-process suites; the membership core and the simulator (CPU-bound meshes on
# virtual time: they would hold the test process's few cooperative threads for seconds, and
# a reply timed by another suite would be late); the suites that spawn real relay processes;
# the federation's two networks in network namespaces (six relays per test, needs root); and
# five relays on a LAN of namespaces under loss, a partition and a restart (issue 17, root).
test: test-deps
	$(SWIFT) build --build-tests
	Tests/Consumer/run .build/debug/skein
	$(SWIFT) test --skip-build --skip SkeinCLITests --skip SkeinSimulatorTests --skip SkeinMembershipTests
	$(SWIFT) test --skip-build --filter 'SkeinMembershipTests|SkeinSimulatorTests'
	$(SWIFT) test --skip-build --filter SkeinCLITests --skip 'SkeinCLITests.FederationTests' --skip 'SkeinCLITests.HealingTests'
	$(SWIFT) test --skip-build --filter 'SkeinCLITests.FederationTests'
	$(SWIFT) test --skip-build --filter 'SkeinCLITests.HealingTests'
	Fuzz/run 20

clean:
	rm -rf .build .build-release
