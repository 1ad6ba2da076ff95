#pragma once
// Forced into every ferry object of the fuzz build with FERRY_FUZZ_TOML=ON (-include, see
// CMakeLists.txt), before toml++'s headers.
//
// toml++'s internal assertions off, as in Debian's library, which is built with NDEBUG:
// toml++ 3.3.0 asserts a precondition it does not check (parse_table_header hands parse_key a
// character that cannot start a key, e.g. "[\\x" or "[[[1]]]"; marzer/tomlplusplus#301). With
// the assertion off, the parser reports a normal syntax error, which is what ferry's builds do;
// ASan and UBSan still watch the parser. Defining TOML_ASSERT here (not NDEBUG) also keeps
// TOML_ASSERT_ASSUME from becoming __builtin_assume under clang, and ferry's own assert()s on.
#define TOML_ASSERT(expr) static_cast<void>(0)
