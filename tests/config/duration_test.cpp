#include <doctest/doctest.h>

#include "config/config.h"

using namespace std::chrono_literals;
using ferry::parse_duration;

namespace {

// The reason parse_duration gives for rejecting `text` ("" if it accepted it).
std::string why_rejected(std::string_view text) {
  std::string why;
  if (parse_duration(text, &why)) return "";
  return why;
}

}  // namespace

TEST_CASE("parse_duration accepts each unit") {
  CHECK(parse_duration("250ms") == 250ms);
  CHECK(parse_duration("10s") == 10s);
  CHECK(parse_duration("5m") == 5min);
  CHECK(parse_duration("1h") == 1h);
}

TEST_CASE("parse_duration adds up sums of units") {
  CHECK(parse_duration("1m30s") == 90s);
  CHECK(parse_duration("1h2m3s4ms") == 1h + 2min + 3s + 4ms);
  CHECK(parse_duration("0m1s") == 1s);
}

TEST_CASE("parse_duration accepts up to 24h and no more") {
  CHECK(parse_duration("24h") == 24h);
  CHECK(parse_duration("23h60m") == 24h);
  CHECK(why_rejected("24h1ms") == "must be at most 24h");
  CHECK(why_rejected("25h") == "must be at most 24h");
  CHECK(why_rejected("86400001ms") == "must be at most 24h");
}

TEST_CASE("parse_duration rejects numbers that overflow") {
  CHECK(why_rejected("99999999999999999999999999s") == "must be at most 24h");
  CHECK(why_rejected("9223372036854775807h") == "must be at most 24h");
  CHECK(why_rejected("20h20h20h20h20h20h20h20h20h20h20h20h") == "must be at most 24h");
}

TEST_CASE("parse_duration rejects zero and negative values") {
  CHECK(why_rejected("0s") == "must be positive");
  CHECK(why_rejected("0h0m") == "must be positive");
  CHECK(why_rejected("-1s") == "must be positive");
}

TEST_CASE("parse_duration rejects empty text") {
  CHECK(why_rejected("") == "empty (use e.g. \"10s\")");
}

TEST_CASE("parse_duration rejects a number without a unit") {
  CHECK(why_rejected("10") == "missing unit after \"10\" (use ms, s, m, h)");
  CHECK(why_rejected("1m30") == "missing unit after \"30\" (use ms, s, m, h)");
}

TEST_CASE("parse_duration rejects unknown units") {
  CHECK(why_rejected("10x") == "unknown unit \"x\" (use ms, s, m, h)");
  CHECK(why_rejected("10S") == "unknown unit \"S\" (use ms, s, m, h)");
  CHECK(why_rejected("1sec") == "unknown unit \"sec\" (use ms, s, m, h)");
  CHECK(why_rejected("2d") == "unknown unit \"d\" (use ms, s, m, h)");
}

TEST_CASE("parse_duration rejects a unit without a number") {
  CHECK(why_rejected("s") == "missing number before \"s\"");
  CHECK(why_rejected("ms") == "missing number before \"ms\"");
}

TEST_CASE("parse_duration rejects fractions") {
  CHECK(why_rejected("1.5s") ==
        "fractions are not supported (use a smaller unit, e.g. \"1500ms\")");
  CHECK(why_rejected("1,5s") ==
        "fractions are not supported (use a smaller unit, e.g. \"1500ms\")");
}

TEST_CASE("parse_duration rejects spaces and signs") {
  CHECK(why_rejected(" 10s") == "unexpected character ' '");
  CHECK(why_rejected("10 s") == "unexpected character ' '");
  CHECK(why_rejected("10s ") == "unexpected character ' '");
  CHECK(why_rejected("+10s") == "unexpected character '+'");
}

TEST_CASE("parse_duration works without a reason pointer") {
  CHECK_FALSE(parse_duration("10x").has_value());
  CHECK(parse_duration("10s").has_value());
}
