// Durations in config values: "250ms", "10s", "5m", "1h" and sums such as "1m30s".
#include <cstdint>
#include <string>

#include "config/config.h"

namespace ferry {
namespace {

constexpr int64_t kMaxMs = int64_t{24} * 60 * 60 * 1000;  // 24h

struct Unit {
  std::string_view name;
  int64_t ms;
};

constexpr Unit kUnits[] = {{"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 60 * 60 * 1000}};

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_letter(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

std::optional<std::chrono::milliseconds> fail(std::string* why, std::string message) {
  if (why) *why = std::move(message);
  return std::nullopt;
}

}  // namespace

std::optional<std::chrono::milliseconds> parse_duration(std::string_view text, std::string* why) {
  if (text.empty()) return fail(why, "empty (use e.g. \"10s\")");

  int64_t total = 0;
  bool too_large = false;
  size_t i = 0;
  while (i < text.size()) {
    // One segment: digits, then a unit.
    if (!is_digit(text[i])) {
      if (text[i] == '-') return fail(why, "must be positive");
      if (is_letter(text[i])) {
        return fail(why, "missing number before \"" + std::string(text.substr(i)) + "\"");
      }
      return fail(why, "unexpected character '" + std::string(1, text[i]) + "'");
    }
    const size_t digits_start = i;
    int64_t value = 0;
    for (; i < text.size() && is_digit(text[i]); ++i) {
      // Anything past 24h in milliseconds is out of range whatever the unit: cap to avoid overflow.
      if (value <= kMaxMs) value = value * 10 + (text[i] - '0');
    }
    if (i < text.size() && (text[i] == '.' || text[i] == ',')) {
      return fail(why, "fractions are not supported (use a smaller unit, e.g. \"1500ms\")");
    }
    const size_t unit_start = i;
    while (i < text.size() && is_letter(text[i])) ++i;
    const std::string_view unit = text.substr(unit_start, i - unit_start);
    if (unit.empty()) {
      if (i == text.size()) {
        return fail(why, "missing unit after \"" +
                             std::string(text.substr(digits_start, i - digits_start)) +
                             "\" (use ms, s, m, h)");
      }
      return fail(why, "unexpected character '" + std::string(1, text[i]) + "'");
    }
    const Unit* found = nullptr;
    for (const Unit& u : kUnits) {
      if (u.name == unit) found = &u;
    }
    if (!found) return fail(why, "unknown unit \"" + std::string(unit) + "\" (use ms, s, m, h)");
    if (too_large || value > kMaxMs || value * found->ms > kMaxMs - total) {
      too_large = true;  // keep scanning: a syntax problem later in the text is reported first
    } else {
      total += value * found->ms;
    }
  }
  if (too_large) return fail(why, "must be at most 24h");
  if (total == 0) return fail(why, "must be positive");
  return std::chrono::milliseconds(total);
}

}  // namespace ferry
