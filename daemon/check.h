#pragma once
// The human-readable summary printed by `ferry --check`.

#include <cstdio>

#include "core/runtime.h"

namespace ferry {

void print_summary(const Runtime& runtime, std::FILE* out);

}  // namespace ferry
