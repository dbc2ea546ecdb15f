#include "core/json_text.h"

#include <gtest/gtest.h>
#include <simdjson.h>

#include <string>
#include <string_view>

namespace keygate {
namespace {

std::string json_string(std::string_view s) {
  std::string out;
  append_json_string(out, s);
  return out;
}

// What a JSON parser reads back from `json` (a string literal).
std::string parsed(const std::string& json) {
  simdjson::dom::parser parser;
  std::string_view value;
  EXPECT_EQ(parser.parse(json).get_string().get(value), simdjson::SUCCESS) << json;
  return std::string(value);
}

TEST(JsonText, QuotesBackslashesAndControlBytesAreEscaped) {
  EXPECT_EQ(json_string("a\"b\\c\n\x01"), R"("a\"b\\c\u000a\u0001")");
}

TEST(JsonText, C1ControlsAreWrittenAsCodePointEscapes) {
  // U+009B is CSI and U+009D OSC to a terminal; U+0080 and U+009F end the range.
  EXPECT_EQ(json_string("x\xc2\x9b" "2J\xc2\x9d\xc2\x80\xc2\x9f"),
            R"("x\u009b2J\u009d\u0080\u009f")");
  EXPECT_EQ(parsed(json_string("x\xc2\x9b" "2J")), "x\xc2\x9b" "2J");
}

TEST(JsonText, LineSeparatorsAndBidiControlsAreEscaped) {
  const std::string text =
      "\xe2\x80\xa8\xe2\x80\xa9\xe2\x80\xaa\xe2\x80\xae\xe2\x81\xa6\xe2\x81\xa9";
  EXPECT_EQ(json_string(text), R"("\u2028\u2029\u202a\u202e\u2066\u2069")");
  EXPECT_EQ(parsed(json_string(text)), text);
}

TEST(JsonText, OtherUtf8PassesThrough) {
  // U+00A0, é, U+2027, U+202F, U+2065 (unassigned), U+206A, €, an emoji; and a cut sequence.
  const std::string text =
      "\xc2\xa0\xc3\xa9\xe2\x80\xa7\xe2\x80\xaf\xe2\x81\xa5\xe2\x81\xaa\xe2\x82\xac"
      "\xf0\x9f\x98\x80";
  EXPECT_EQ(json_string(text), "\"" + text + "\"");
  EXPECT_EQ(parsed(json_string(text)), text);
}

// Found with tests/fuzz/admin_api_fuzz.cc: GET /admin/keys?%FF=1 answered 400 unknown_field with
// the raw byte 0xFF as the "field", which no JSON parser accepts. Each byte that is not part of
// valid UTF-8 becomes U+FFFD (a cut sequence too: the escaper must not read past the end).
TEST(JsonText, BytesThatAreNotUtf8BecomeReplacementCharacters) {
  EXPECT_EQ(json_string("a\xff"), R"("a\ufffd")");
  EXPECT_EQ(json_string("\x80z"), R"("\ufffdz")");
  EXPECT_EQ(json_string("a\xc2"), R"("a\ufffd")");
  EXPECT_EQ(json_string("a\xe2\x80"), R"("a\ufffd\ufffd")");
  EXPECT_EQ(json_string("\xc0\xaf"), R"("\ufffd\ufffd")");           // overlong '/'
  EXPECT_EQ(json_string("\xed\xa0\x80"), R"("\ufffd\ufffd\ufffd")");  // a surrogate
  EXPECT_EQ(json_string("\xf4\x90\x80\x80"), R"("\ufffd\ufffd\ufffd\ufffd")");  // > U+10FFFF
  for (const std::string_view bad : {"\xff", "a\xc2", "\xed\xa0\x80", "\xe2\x80\xa8\xe2"}) {
    const std::string json = json_string(bad);
    simdjson::dom::parser parser;
    EXPECT_EQ(parser.parse(json).error(), simdjson::SUCCESS) << json;
  }
}

}  // namespace
}  // namespace keygate
