#include "core/access_record.h"

#include <gtest/gtest.h>
#include <simdjson.h>

#include <algorithm>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace keygate {
namespace {

// A generated-shape key and one made of every character class that needs some
// escaping.
constexpr std::string_view kKey = "kg_4fT9xQ2LmZ8pR1vW7yB3nC6dH0jK5sA2eG1a2b";
constexpr std::string_view kOddKey = "ab+c/d&e=f\"g\\h i%j?k#l;m'n<o>";
constexpr std::string_view kForm =
    "application/x-www-form-urlencoded; charset=UTF-8";
constexpr std::string_view kJson = "application/json";
constexpr std::string_view kMarker = "[redacted:k_abc]";

std::string hex_byte(unsigned char c, bool upper) {
  const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  return {digits[c >> 4], digits[c & 0xf]};
}

// %XX of every character.
std::string pct_all(std::string_view s, bool upper = true) {
  std::string out;
  for (char c : s)
    out += "%" + hex_byte(static_cast<unsigned char>(c), upper);
  return out;
}

bool unreserved(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

// %XX of the reserved characters only; `plus_space` writes a space as '+' (form
// style).
std::string pct_reserved(std::string_view s, bool plus_space = false) {
  std::string out;
  for (char c : s) {
    if (unreserved(c)) {
      out += c;
    } else if (c == ' ' && plus_space) {
      out += '+';
    } else {
      out += "%" + hex_byte(static_cast<unsigned char>(c), true);
    }
  }
  return out;
}

// As a JSON string's content: minimal escaping, or \u00XX for every character.
std::string json_min(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\')
      out += '\\';
    out += c;
  }
  return out;
}
std::string json_all(std::string_view s) {
  std::string out;
  for (char c : s)
    out += "\\u00" + hex_byte(static_cast<unsigned char>(c), false);
  return out;
}

// The forms a key could take in a record; none may occur.
void expect_no_trace(std::string_view record, std::string_view key) {
  const std::vector<std::string> forms = {
      std::string(key),        pct_all(key),
      pct_all(key, false),     pct_reserved(key),
      pct_reserved(key, true), json_min(key),
      json_all(key),           json_min(pct_reserved(key))};
  for (const std::string &form : forms) {
    EXPECT_EQ(record.find(form), std::string_view::npos)
        << "form " << form << " in " << record;
  }
}

// Parses a record; fails the test when it is not one valid JSON object.
simdjson::dom::element parse(simdjson::dom::parser &parser,
                             const std::string &record) {
  simdjson::dom::element doc;
  EXPECT_EQ(parser.parse(record).get(doc), simdjson::SUCCESS) << record;
  EXPECT_TRUE(doc.is_object()) << record;
  return doc;
}

std::string field(const std::string &record, std::string_view a,
                  std::string_view b = {}) {
  simdjson::dom::parser parser;
  simdjson::dom::element e = parse(parser, record);
  simdjson::dom::element v;
  if (e[a].get(v) != simdjson::SUCCESS)
    return "<missing>";
  if (!b.empty() && v[b].get(v) != simdjson::SUCCESS)
    return "<missing>";
  std::string_view s;
  if (v.get_string().get(s) != simdjson::SUCCESS)
    return "<not a string>";
  return std::string(s);
}

AccessRecord base_record() {
  AccessRecord r;
  r.time_us = 1700000000123456;
  r.request_id = 42;
  r.worker = 1;
  r.listener = "data";
  r.client = "10.0.0.1:5555";
  r.key_id = "k_abc";
  r.api = "orders";
  r.method = "POST";
  r.target = "/orders";
  r.status = 200;
  r.bytes_in = 10;
  r.bytes_out = 20;
  r.duration_us = 300;
  return r;
}

// Writes one record (with the given captured request/response) and checks it is
// valid JSON.
struct Writer {
  AccessRecordWriter writer;
  std::vector<std::string_view> values;

  std::string write(AccessRecord r) {
    r.key_values = values;
    std::string out;
    writer.append(r, out);
    EXPECT_FALSE(out.empty());
    EXPECT_EQ(out.front(), '{');
    EXPECT_EQ(out.find('\n'), std::string::npos);
    simdjson::dom::parser parser;
    parse(parser, out);
    expect_same_in_fixed_buffers(r, out);
    return out;
  }
  // Every record is also written into fixed buffers (the log's in-place path): the same
  // bytes when it fits, 0 (never a partial record) when it does not.
  void expect_same_in_fixed_buffers(const AccessRecord &r, const std::string &out) {
    const size_t hint = AccessRecordWriter::capacity_hint(r);
    std::vector<char> buf(std::max(hint, out.size()) + 1);
    const size_t hinted = writer.append(r, buf.data(), hint);
    if (hinted != 0) {
      EXPECT_EQ(std::string_view(buf.data(), hinted), out);
    } else {
      EXPECT_GT(out.size(), hint); // only a record longer than the hint may not fit it
    }
    ASSERT_EQ(writer.append(r, buf.data(), out.size()), out.size());
    EXPECT_EQ(std::string_view(buf.data(), out.size()), out);
    EXPECT_EQ(writer.append(r, buf.data(), out.size() - 1), 0u);
    EXPECT_EQ(writer.append(r, buf.data(), out.size() / 2), 0u);
    EXPECT_EQ(writer.append(r, buf.data(), 0), 0u);
  }
  std::string with_request(std::string_view head, std::string_view body = {},
                           std::string_view content_type = {},
                           bool truncated = false) {
    CapturedMessage m{head, body, truncated, content_type};
    AccessRecord r = base_record();
    r.request = &m;
    return write(r);
  }
};

std::string head_with(std::string_view header_lines,
                      std::string_view target = "/orders") {
  return "POST " + std::string(target) + " HTTP/1.1\r\nHost: api.example\r\n" +
         std::string(header_lines) + "Accept: */*\r\n\r\n";
}

TEST(AccessRecord, WritesEveryFieldInOrder) {
  Writer w;
  AccessRecord r = base_record();
  r.user = "alice";
  r.reason = "api_not_permitted";
  r.status = 403;
  EXPECT_EQ(w.write(r),
            "{\"time_us\":1700000000123456,\"request_id\":42,\"worker\":1,"
            "\"listener\":\"data\","
            "\"client\":\"10.0.0.1:5555\",\"key_id\":\"k_abc\",\"user\":"
            "\"alice\",\"api\":\"orders\","
            "\"method\":\"POST\",\"path\":\"/"
            "orders\",\"status\":403,\"bytes_in\":10,\"bytes_out\":20,"
            "\"duration_us\":300,\"reason\":\"api_not_permitted\"}");
}

TEST(AccessRecord, EmptyOptionalFieldsAreNull) {
  Writer w;
  AccessRecord r = base_record();
  r.key_id = "";
  r.api = "";
  const std::string out = w.write(r);
  EXPECT_NE(out.find("\"key_id\":null,\"user\":null,\"api\":null"),
            std::string::npos);
  EXPECT_NE(out.find("\"reason\":null}"), std::string::npos);
}

TEST(AccessRecord, CapturedMessagesAreWrittenWithTheirTruncationFlag) {
  Writer w;
  CapturedMessage req{"GET /orders HTTP/1.1\r\nHost: a\r\n\r\n", "", false, ""};
  CapturedMessage resp{"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
                       "hello", true, "text/plain"};
  AccessRecord r = base_record();
  r.request = &req;
  r.response = &resp;
  const std::string out = w.write(r);
  EXPECT_NE(
      out.find(
          ",\"request\":{\"head\":\"GET /orders HTTP/1.1\\r\\nHost: "
          "a\\r\\n\\r\\n\",\"body\":\"\",\"body_truncated\":"
          "false},"
          "\"response\":{\"head\":"),
      std::string::npos)
      << out;
  EXPECT_TRUE(out.ends_with(",\"body\":\"hello\",\"body_truncated\":true}}"))
      << out;
  EXPECT_EQ(field(out, "response", "head"), resp.head);
}

TEST(AccessRecord, AppendsToExistingOutput) {
  AccessRecordWriter writer;
  std::string out = "x\n";
  writer.append(base_record(), out);
  EXPECT_TRUE(out.starts_with("x\n{\"time_us\":"));
  std::string out2;
  append_access_record(base_record(), out2);
  EXPECT_EQ(out.substr(2), out2);
}

// --- JSON escaping ---

TEST(AccessRecordJson, EscapesQuotesBackslashesAndControlBytes) {
  std::string out;
  append_json_escaped(std::string_view("a\"b\\c\x01\n\x1f\x7f\b\t\f\r", 13), out);
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\u0001\\n\\u001f\x7f\\b\\t\\f\\r\"");
}

TEST(AccessRecordJson, ValidUtf8PassesAndInvalidBytesBecomeEscapes) {
  std::string out;
  append_json_escaped("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", out);
  EXPECT_EQ(out, "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
  out.clear();
  // Lone continuation, overlong, surrogate, above U+10FFFF, cut-off sequence.
  append_json_escaped("\x80 \xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82",
                      out);
  EXPECT_EQ(out, "\"\\u0080 \\u00c0\\u00af \\u00ed\\u00a0\\u0080 "
                 "\\u00f4\\u0090\\u0080\\u0080 "
                 "\\u00e2\\u0082\"");
}

TEST(AccessRecordJson, C1ControlsAreEscapedByteByByteLikeInvalidUtf8) {
  // U+009B (CSI) and U+009D (OSC) would drive a terminal showing the record; U+0080 and
  // U+009F are the ends of the C1 range, U+00A0 (no-break space) the first that passes.
  std::string out;
  append_json_escaped("a\xc2\x9b" "2J\xc2\x9d" "0;t\x07 \xc2\x80\xc2\x9f\xc2\xa0\xc2\xbf", out);
  EXPECT_EQ(out, "\"a\\u00c2\\u009b2J\\u00c2\\u009d0;t\\u0007 "
                 "\\u00c2\\u0080\\u00c2\\u009f\xc2\xa0\xc2\xbf\"");
}

TEST(AccessRecordJson, EveryFieldOfHostileBytesStillParses) {
  std::string hostile;
  for (int c = 0; c < 256; ++c)
    hostile.push_back(static_cast<char>(c));
  Writer w;
  AccessRecord r = base_record();
  r.client = hostile;
  r.method = hostile;
  r.target = hostile;
  r.user = hostile;
  r.reason = hostile;
  CapturedMessage m{hostile, hostile, false, kJson};
  r.request = &m;
  r.response = &m;
  const std::string out = w.write(r); // parses
  // Bytes 0x00-0x7F come back exactly; the rest as the Latin-1 code points of
  // the bytes.
  const std::string method = field(out, "method");
  EXPECT_EQ(method.substr(0, 128), hostile.substr(0, 128));
}

// --- redaction: head ---

TEST(AccessRecordRedaction, ApiKeyHeaderValueIsRedacted) {
  Writer w;
  const std::string out =
      w.with_request(head_with("X-ApiKey: " + std::string(kKey) + "\r\n"));
  expect_no_trace(out, kKey);
  EXPECT_EQ(field(out, "request", "head"),
            head_with("X-ApiKey: " + std::string(kMarker) + "\r\n"));
}

TEST(AccessRecordRedaction, RepeatedApiKeyHeadersInAnyCaseAreRedacted) {
  Writer w;
  const std::string out = w.with_request(
      head_with("x-apikey: " + std::string(kKey) + "\r\nX-APIKEY:\t" +
                std::string(kOddKey) + " \r\n"));
  expect_no_trace(out, kKey);
  expect_no_trace(out, kOddKey);
  EXPECT_EQ(
      field(out, "request", "head"),
      head_with(
          "x-apikey: [redacted:k_abc]\r\nX-APIKEY:\t[redacted:k_abc] \r\n"));
}

TEST(AccessRecordRedaction, QueryKeyInRequestLineAndPathIsRedacted) {
  Writer w;
  const std::string target =
      "/orders?a=1&key=" + std::string(kKey) + "&b=x+y%20z";
  const std::string head = head_with("", target);
  CapturedMessage m{head, "", false, ""};
  AccessRecord r = base_record();
  r.target = target;
  r.request = &m;
  const std::string out = w.write(r);
  expect_no_trace(out, kKey);
  EXPECT_EQ(field(out, "path"), "/orders?a=1&key=[redacted:k_abc]&b=x+y%20z");
  EXPECT_EQ(field(out, "request", "head"),
            head_with("", "/orders?a=1&key=[redacted:k_abc]&b=x+y%20z"));
}

TEST(AccessRecordRedaction, EncodedKeyNameAndEncodedValueAreRedacted) {
  Writer w;
  AccessRecord r = base_record();
  const std::string target =
      "/o?k%65y=" + pct_all(kOddKey) + "&%6B%65%79=" + pct_reserved(kKey) +
      "&key=" + pct_reserved(kOddKey, true) + "&keys=1&akey=2";
  r.target = target;
  const std::string out = w.write(r);
  expect_no_trace(out, kKey);
  expect_no_trace(out, kOddKey);
  EXPECT_EQ(field(out, "path"), "/o?k%65y=[redacted:k_abc]&%6B%65%79=[redacted:"
                                "k_abc]&key=[redacted:k_abc]&keys=1"
                                "&akey=2");
}

TEST(AccessRecordRedaction, RepeatedQueryKeysAreAllRedacted) {
  Writer w;
  AccessRecord r = base_record();
  const std::string target =
      "/o?key=" + std::string(kKey) + "&key=" + std::string(kKey) + "&key";
  r.target = target;
  const std::string out = w.write(r);
  expect_no_trace(out, kKey);
  EXPECT_EQ(field(out, "path"),
            "/o?key=[redacted:k_abc]&key=[redacted:k_abc]&key");
}

// --- redaction: bodies ---

TEST(AccessRecordRedaction, FormKeyFieldIsRedacted) {
  Writer w;
  const std::string body = "a=1&key=" + pct_reserved(kOddKey, true) +
                           "&&k%65y=" + std::string(kKey) + "&b=c+d%2B";
  const std::string out = w.with_request(head_with(""), body, kForm);
  expect_no_trace(out, kKey);
  expect_no_trace(out, kOddKey);
  EXPECT_EQ(field(out, "request", "body"),
            "a=1&key=[redacted:k_abc]&&k%65y=[redacted:k_abc]&b=c+d%2B");
}

TEST(AccessRecordRedaction, JsonApiKeyMemberIsRedacted) {
  Writer w;
  const std::string body =
      "{\"x\":\"keep\", \"API_Key\" :  \"" + std::string(kKey) + "\",\"n\":1}";
  const std::string out = w.with_request(head_with(""), body, kJson);
  expect_no_trace(out, kKey);
  EXPECT_EQ(field(out, "request", "body"),
            "{\"x\":\"keep\", \"API_Key\" :  \"[redacted:k_abc]\",\"n\":1}");
}

TEST(AccessRecordRedaction, EscapedMemberNameIsRecognized) {
  Writer w;
  const std::string body = "{\"API\\u005fKey\":\"" + std::string(kKey) +
                           "\",\"\\u0041PI_Ke\\u0079\":\"" + std::string(kKey) +
                           "\"}";
  const std::string out = w.with_request(head_with(""), body, kJson);
  expect_no_trace(out, kKey);
  EXPECT_EQ(field(out, "request", "body"),
            "{\"API\\u005fKey\":\"[redacted:k_abc]\",\"\\u0041PI_Ke\\u0079\":"
            "\"[redacted:k_abc]\"}");
}

TEST(AccessRecordRedaction, EscapedValueIsRedacted) {
  Writer w;
  const std::string body = "{\"API_Key\":\"" + json_all(kKey) + "\"}";
  const std::string odd = "{\"API_Key\":\"" + json_min(kOddKey) + "\"}";
  const std::string out = w.with_request(head_with(""), body, kJson);
  expect_no_trace(out, kKey);
  EXPECT_EQ(field(out, "request", "body"),
            "{\"API_Key\":\"[redacted:k_abc]\"}");
  const std::string out2 = w.with_request(head_with(""), odd, kJson);
  expect_no_trace(out2, kOddKey);
  EXPECT_EQ(field(out2, "request", "body"),
            "{\"API_Key\":\"[redacted:k_abc]\"}");
}

TEST(AccessRecordRedaction, DuplicatedAndNestedMembersAreAllRedacted) {
  Writer w;
  const std::string k(kKey);
  const std::string body =
      "{\"API_Key\":\"" + k + "1\",\"a\":{\"b\":[{\"API_Key\":\"" + k +
      "2\"},{\"c\":{\"API_Key\":\"" + k + "3\"}}]},\"API_Key\":\"" + k +
      "4\",\"api_key\":\"visible\"}";
  const std::string out = w.with_request(head_with(""), body, kJson);
  expect_no_trace(out, kKey);
  EXPECT_EQ(field(out, "request", "body"),
            "{\"API_Key\":\"[redacted:k_abc]\",\"a\":{\"b\":[{\"API_Key\":\"["
            "redacted:k_abc]\"},"
            "{\"c\":{\"API_Key\":\"[redacted:k_abc]\"}}]},\"API_Key\":\"["
            "redacted:k_abc]\","
            "\"api_key\":\"visible\"}");
}

TEST(AccessRecordRedaction, NonStringApiKeyValuesAreRedactedContainersWalked) {
  Writer w;
  const std::string out = w.with_request(
      head_with(""),
      "{\"API_Key\":12345,\"x\":[{\"API_Key\":true}],\"API_Key\":{\"k\":1}}",
      kJson);
  EXPECT_EQ(
      field(out, "request", "body"),
      "{\"API_Key\":[redacted:k_abc],\"x\":[{\"API_Key\":[redacted:k_abc]}],"
      "\"API_Key\":{\"k\":1}}");
}

TEST(AccessRecordRedaction, MalformedJsonIsStillRedacted) {
  Writer w;
  const std::string k(kKey);
  for (const std::string &body : {
           "{\"API_Key\":\"" + k + "\"",               // unterminated object
           "{\"x\":[1}, \"API_Key\":\"" + k + "\",,]", // mismatched brackets
           "{\"x\":\"unterminated, \"API_Key\":\"" + k +
               "\"}",                                // quote pairing broken
           "[\"API_Key\" : \"" + k + "\"]",          // member where none may be
           "garbage \"API_Key\":\"" + k + "\" more", // not JSON at all
       }) {
    const std::string out = w.with_request(head_with(""), body, kJson);
    expect_no_trace(out, kKey);
    EXPECT_NE(field(out, "request", "body").find(kMarker), std::string::npos)
        << body;
  }
}

TEST(AccessRecordRedaction, JsonLookingBodyOfAnyTypeIsRedacted) {
  Writer w;
  const std::string body = "{\"API_Key\":\"" + std::string(kKey) + "\"}";
  for (std::string_view type :
       {"text/plain", "", "application/octet-stream", "application/vnd+json"}) {
    const std::string out = w.with_request(head_with(""), body, type);
    expect_no_trace(out, kKey);
  }
}

TEST(AccessRecordRedaction,
     TruncatedBodyEndingInsideTheValueIsRedactedToTheEnd) {
  Writer w;
  const std::string prefix = "{\"a\":1,\"API_Key\":\"";
  const std::string body = prefix + std::string(kKey.substr(0, 20));
  const std::string out = w.with_request(head_with(""), body, kJson, true);
  EXPECT_EQ(out.find(kKey.substr(0, 20)), std::string::npos);
  EXPECT_EQ(field(out, "request", "body"), prefix + std::string(kMarker));
  // Cut off inside an escape.
  const std::string escaped = prefix + "kg\\u00";
  const std::string out2 = w.with_request(head_with(""), escaped, kJson, true);
  EXPECT_EQ(field(out2, "request", "body"), prefix + std::string(kMarker));
}

TEST(AccessRecordRedaction, DataListenerKeepsOrdinaryKeyMembers) {
  Writer w;
  const std::string body = "{\"key\":\"a-sort-key\",\"keys\":[1]}";
  const std::string out = w.with_request(head_with(""), body, kJson);
  EXPECT_EQ(field(out, "request", "body"), body);
}

TEST(AccessRecordRedaction, AdminPlaintextKeyMembersAreRedacted) {
  Writer w;
  const std::string created =
      "{\"id\":\"k_new\",\"apis\":[\"orders\"],\"key\":\"" + std::string(kKey) +
      "\",\"hint\":\"kg_4...2b\"}";
  const std::string import =
      "{\"keys\":[{\"key\":\"" + std::string(kOddKey.substr(0, 5)) +
      "\"},{\"id\":\"x\",\"k\\u0065y\":\"" + json_min(kOddKey) + "\"}]}";
  CapturedMessage req{"POST /admin/keys/import HTTP/1.1\r\n\r\n", import, false,
                      kJson};
  CapturedMessage resp{"HTTP/1.1 201 Created\r\n\r\n", created, false, kJson};
  AccessRecord r = base_record();
  r.listener = "admin";
  r.request = &req;
  r.response = &resp;
  const std::string out = w.write(r);
  expect_no_trace(out, kKey);
  expect_no_trace(out, kOddKey);
  EXPECT_EQ(out.find(kOddKey.substr(0, 5)), std::string::npos);
  EXPECT_EQ(field(out, "response", "body"),
            "{\"id\":\"k_new\",\"apis\":[\"orders\"],\"key\":\"[redacted]\","
            "\"hint\":\"kg_4...2b\"}");
  EXPECT_EQ(field(out, "request", "body"),
            "{\"keys\":[{\"key\":\"[redacted]\"},{\"id\":\"x\",\"k\\u0065y\":"
            "\"[redacted]\"}]}");
}

TEST(AccessRecordRedaction, NoKeyIdGivesThePlainMarker) {
  Writer w;
  AccessRecord r = base_record();
  r.key_id = "";
  r.target = "/o?key=abc";
  EXPECT_EQ(field(w.write(r), "path"), "/o?key=[redacted]");
}

// --- redaction by value ---

TEST(AccessRecordRedaction, KeyValueIsScrubbedFromEveryPlace) {
  Writer w;
  w.values = {kKey};
  const std::string k(kKey);
  const std::string target =
      "/orders/" + k + "/items?token=" + pct_all(k, false);
  const std::string head = head_with(
      "Referer: https://x.example/?k=" + k + "\r\nAuthorization: Bearer " +
          pct_all(k) + "\r\nX-Note: " + json_all(k) + "\r\n",
      target);
  const std::string body = "note " + k + " and \"" + json_all(k) + "\" and " +
                           pct_all(k) + " and " +
                           "kg%5f4fT9\\u0078Q2LmZ8pR1vW7yB3nC6dH0jK5sA2eG1a2b";
  CapturedMessage req{head, body, false, "text/plain"};
  const std::string resp_head = "HTTP/1.1 200 OK\r\nX-Echo: " + k + "\r\n\r\n";
  const std::string resp_body = "you sent " + k;
  CapturedMessage resp{resp_head, resp_body, false, "text/plain"};
  AccessRecord r = base_record();
  r.target = target;
  r.method = "GET";
  r.request = &req;
  r.response = &resp;
  const std::string out = w.write(r);
  expect_no_trace(out, kKey);
  EXPECT_EQ(field(out, "path"),
            "/orders/[redacted:k_abc]/items?token=[redacted:k_abc]");
  EXPECT_EQ(
      field(out, "request", "body"),
      "note [redacted:k_abc] and \"[redacted:k_abc]\" and [redacted:k_abc] and "
      "[redacted:k_abc]");
  EXPECT_EQ(field(out, "response", "body"), "you sent [redacted:k_abc]");
}

TEST(AccessRecordRedaction, OddKeyValueIsScrubbedInEveryEncoding) {
  Writer w;
  w.values = {kKey, kOddKey};
  const std::string odd(kOddKey);
  const std::string body =
      "1:" + odd + " 2:" + pct_all(odd) + " 3:" + pct_all(odd, false) +
      " 4:" + pct_reserved(odd) + " 5:" + pct_reserved(odd, true) +
      " 6:" + json_min(odd) + " 7:" + json_all(odd) + " end";
  const std::string out = w.with_request(head_with(""), body, "text/plain");
  expect_no_trace(out, kOddKey);
  EXPECT_EQ(field(out, "request", "body"),
            "1:[redacted:k_abc] 2:[redacted:k_abc] 3:[redacted:k_abc] "
            "4:[redacted:k_abc] "
            "5:[redacted:k_abc] 6:[redacted:k_abc] 7:[redacted:k_abc] end");
}

TEST(AccessRecordRedaction, NearMissesOfTheKeySurvive) {
  Writer w;
  w.values = {kKey};
  const std::string near =
      std::string(kKey.substr(0, kKey.size() - 1)) + "X %4 %zz \\u00 \\q";
  const std::string out = w.with_request(head_with(""), near, "text/plain");
  EXPECT_EQ(field(out, "request", "body"), near);
}

// A body cut at the capture limit may end inside a key: every prefix of four or more of its
// bytes, in any encoding, is redacted to the end (the first 36 characters of a generated key
// hold all its randomness). Bodies that were not cut keep such a tail (a near miss).
TEST(AccessRecordRedaction, KeyPrefixAtTheCutOfATruncatedBodyIsRedacted) {
  Writer w;
  w.values = {kKey};
  const std::string k(kKey);
  for (size_t n = 4; n < k.size(); ++n) {
    const std::string prefix = k.substr(0, n);
    for (const std::string& tail : {prefix, pct_all(prefix), json_all(prefix)}) {
      const std::string body = "pad pad " + tail;
      const std::string out = w.with_request(head_with(""), body, "text/plain", true);
      EXPECT_EQ(field(out, "request", "body"), "pad pad [redacted:k_abc]") << tail;
      const std::string kept = w.with_request(head_with(""), body, "text/plain", false);
      EXPECT_EQ(field(kept, "request", "body"), body) << tail;
    }
  }
  // Three bytes (less than the display hint shows) and a tail that is not the key's start
  // are kept, as is a key prefix that does not run to the cut.
  for (const std::string& body : {"pad " + k.substr(0, 3), "pad " + k.substr(1, 10),
                                   "pad " + k.substr(0, 10) + " more"}) {
    EXPECT_EQ(field(w.with_request(head_with(""), body, "text/plain", true), "request", "body"),
              body);
  }
  // Also in a JSON body (its fast path) and with a whole key before the cut.
  const std::string json = "{\"note\":\"" + k + "\",\"x\":\"" + k.substr(0, 20);
  EXPECT_EQ(field(w.with_request(head_with(""), json, "application/json", true), "request",
                  "body"),
            "{\"note\":\"[redacted:k_abc]\",\"x\":\"[redacted:k_abc]");
}

TEST(AccessRecordRedaction, RedactionCannotJoinNeighboursIntoAKey) {
  Writer w;
  // Redacting "abc" would leave exactly the second value; the rescan catches
  // it.
  w.values = {"abc", "Q[redacted:k_abc]Z"};
  const std::string out = w.with_request(head_with(""), "QabcZ", "text/plain");
  EXPECT_EQ(field(out, "request", "body"), "[redacted:k_abc]");
  // A value that is part of the marker's own text does not loop.
  Writer w2;
  w2.values = {"red"};
  const std::string out2 =
      w2.with_request(head_with(""), "reduce red", "text/plain");
  EXPECT_EQ(field(out2, "request", "body"),
            "[redacted:k_abc]uce [redacted:k_abc]");
}

TEST(AccessRecordRedaction, NonKeyDataSurvivesUnchanged) {
  Writer w;
  w.values = {kKey};
  const std::string head =
      head_with("X-Api: orders\r\nCookie: a=b; key=c\r\n", "/o?x=%41&y=+");
  const std::string body =
      "{\"name\":\"caf\xc3\xa9\",\"n\":[1,2.5e3,null],\"s\":\"a\\\"b\"}";
  CapturedMessage m{head, body, false, kJson};
  AccessRecord r = base_record();
  r.target = "/o?x=%41&y=+";
  r.request = &m;
  r.response = &m;
  const std::string out = w.write(r);
  EXPECT_EQ(field(out, "path"), "/o?x=%41&y=+");
  EXPECT_EQ(field(out, "request", "head"), head);
  EXPECT_EQ(field(out, "request", "body"), body);
  EXPECT_EQ(field(out, "response", "body"), body);
}

TEST(AccessRecordRedaction, EscapeHeavyOrdinaryTextStaysWithinTheScanBudget) {
  Writer w;
  w.values = {kKey, kOddKey};
  std::string body = "{\"text\":\"";
  while (body.size() < 256 * 1024)
    body += "line\\n\\t\\\"q\\\" %E4%B8%AD a+b \\u00e9 kg_x ";
  body += "\"}";
  const std::string out = w.with_request(head_with(""), body, kJson);
  EXPECT_EQ(field(out, "request", "body"), body);
}

TEST(AccessRecordRedaction,
     TextCraftedToNearlyMatchEverywhereIsCutOffNotLeaked) {
  Writer w;
  const std::string key = std::string(255, '\\') + "x";
  w.values = {key};
  // Every position is a 255-byte partial match, each '\\' read raw or as half
  // of "\\\\".
  std::string body(512 * 1024, '\\');
  body = "prefix " + body + key;
  const std::string out = w.with_request(head_with(""), body, "text/plain");
  const std::string logged = field(out, "request", "body");
  EXPECT_TRUE(logged.starts_with("prefix ")) << logged.substr(0, 40);
  EXPECT_TRUE(logged.ends_with(kMarker));
  EXPECT_EQ(logged.find(key), std::string::npos);
  EXPECT_LT(logged.size(), body.size());
}

TEST(AccessRecordRedaction, WriterReuseGivesTheSameRecords) {
  Writer w;
  w.values = {kKey};
  const std::string body =
      "{\"API_Key\":\"" + std::string(kKey) + "\"} " + std::string(kKey);
  const std::string first =
      w.with_request(head_with("X-ApiKey: x\r\n"), body, kJson);
  const std::string plain =
      w.with_request(head_with(""), "plain", "text/plain");
  const std::string again =
      w.with_request(head_with("X-ApiKey: x\r\n"), body, kJson);
  EXPECT_EQ(first, again);
  EXPECT_EQ(field(plain, "request", "body"), "plain");
}


// --- block scans: the same results wherever a byte falls relative to a 16-byte block ---

// Escaping as specified at the top of access_record.h, one byte at a time.
std::string reference_escaped(std::string_view s) {
  const auto valid_utf8 = [&](size_t i) -> size_t {
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
    const unsigned char c = b(0);
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      lo = c == 0xC2 ? 0xA0 : 0x80; // C1 controls (C2 80..C2 9F) do not pass
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      lo = c == 0xE0 ? 0xA0 : 0x80;
      hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      lo = c == 0xF0 ? 0x90 : 0x80;
      hi = c == 0xF4 ? 0x8F : 0xBF;
    } else {
      return 0;
    }
    if (s.size() - i < len || b(1) < lo || b(1) > hi)
      return 0;
    for (size_t k = 2; k < len; ++k) {
      if (b(k) < 0x80 || b(k) > 0xBF)
        return 0;
    }
    return len;
  };
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    const auto u = static_cast<unsigned char>(s[i]);
    if (u == '"' || u == '\\') {
      out += '\\';
      out += static_cast<char>(u);
      ++i;
    } else if (u >= 0x20 && u < 0x80) {
      out += static_cast<char>(u);
      ++i;
    } else if (const size_t len = u >= 0x80 ? valid_utf8(i) : 0; len != 0) {
      out.append(s.substr(i, len));
      i += len;
    } else if (const char* short_escape = u == '\b'   ? "\\b"
                                          : u == '\t' ? "\\t"
                                          : u == '\n' ? "\\n"
                                          : u == '\f' ? "\\f"
                                          : u == '\r' ? "\\r"
                                                      : nullptr) {
      out += short_escape;
      ++i;
    } else {
      out += "\\u00" + hex_byte(u, false);
      ++i;
    }
  }
  return out + "\"";
}

TEST(AccessRecordJson, EscapesAtEveryOffsetAndLengthMatchTheReference) {
  const std::vector<std::string> specials = {
      "\"", "\\", "\n", std::string(1, '\0'), "\x1f", "\x7f", "\xc3\xa9",
      "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\x80", "\xc3", "\xe2\x82", "\xf0\x9f\x98",
      "\xed\xa0\x80", "\xff", "\"\"\\\\", "\xc3\xa9\xc3\xa9\n\"", "\xc2\x9b",
      "\xc2\x80", "\xc2\x9f", "\xc2\xa0", "\xc2\x9b[2J\xc2\x9d" "0;x\x07"};
  // Up to past four 32-byte blocks: the block loop, then a tail under two blocks (escaped
  // through a padded copy) with the special byte in either part or across them.
  for (const std::string &special : specials) {
    for (size_t len = 0; len <= 140; ++len) {
      for (size_t at = 0; at + special.size() <= len; ++at) {
        std::string s(len, 'a');
        s.replace(at, special.size(), special);
        std::string out = "x";
        append_json_escaped(s, out);
        ASSERT_EQ(out, "x" + reference_escaped(s))
            << "len " << len << " at " << at << " special " << reference_escaped(special);
      }
    }
  }
}

TEST(AccessRecordJson, RandomBytesMatchTheReference) {
  std::mt19937 rng(7);
  for (int round = 0; round < 300; ++round) {
    std::string s(rng() % 600, '\0');
    const auto kind = static_cast<uint32_t>(rng() % 4);
    for (char &c : s) {
      const auto r = static_cast<uint32_t>(rng());
      // All bytes; mostly ASCII with some escapes; UTF-8 lead/continuation heavy; escape-dense.
      c = kind == 0   ? static_cast<char>(r & 0xff)
          : kind == 1 ? (r % 16 == 0 ? "\"\\\n\xc3\xa9\x80\xc2\x9b"[r / 16 % 8]
                                       : static_cast<char>('a' + r / 16 % 26))
          : kind == 2 ? static_cast<char>(0x80 | (r & 0x7f))
                      : "\"\\\x01 a\xe2\x82\xac"[r % 8];
    }
    std::string out;
    append_json_escaped(s, out);
    ASSERT_EQ(out, reference_escaped(s)) << "round " << round;
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    ASSERT_EQ(parser.parse(out).get(doc), simdjson::SUCCESS) << "round " << round;
  }
}

TEST(AccessRecordRedaction, KeyValueIsFoundAtEveryOffsetInLongText) {
  const std::string k(kKey);
  const std::vector<std::string> forms = {
      k,
      pct_all(k),
      json_all(k),
      "%6B" + k.substr(1),            // only the first byte encoded
      "k%67" + k.substr(2),           // the first byte raw, the second encoded
      "k\\u0067" + k.substr(2),
      "\\u006b" + k.substr(1)};
  for (const std::string &form : forms) {
    for (size_t before = 0; before <= 40; ++before) {
      for (size_t after : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{17}, size_t{40}}) {
        Writer w;
        w.values = {kKey};
        // Filler of bytes the scan must pass over: the key's own first byte, '%' and '\\'
        // that start nothing, and quotes.
        std::string text;
        while (text.size() < before)
          text += "k%zz\\q\"kx"[text.size() % 9];
        const std::string head = text;
        text += form;
        std::string tail;
        while (tail.size() < after)
          tail += "x\"k%\\"[tail.size() % 5];
        text += tail;
        const std::string out = w.with_request(head_with(""), text, "text/plain");
        expect_no_trace(out, kKey);
        ASSERT_EQ(field(out, "request", "body"), head + std::string(kMarker) + tail)
            << "form " << form << " before " << before << " after " << after;
      }
    }
  }
}

// Ordinary text lets the body scan skip whole blocks on a cheap test; a key whose first byte
// ends one block while the byte telling it apart ('%', '\\') begins the next must still be
// found, at every alignment, after and before runs of such blocks. (Run also with
// KEYGATE_NO_AVX2=1: the 16-byte blocks; see tests/core/CMakeLists.txt.)
TEST(AccessRecordRedaction, KeyStraddlingSkippedBlocksIsFoundAtEveryOffset) {
  const std::string k(kKey);
  constexpr std::string_view kProse = "The quick brown fox jumps over the lazy dog 0123456789.\n";
  for (const std::string &form : {std::string(k), "k%67" + k.substr(2), "k\\u0067" + k.substr(2),
                                  "k%67%5F" + k.substr(3), "\"API_Key\": \"" + k + "\""}) {
    for (size_t before = 0; before <= 130; ++before) {
      Writer w;
      w.values = {kKey};
      std::string pad;
      while (pad.size() < before)
        pad += kProse[pad.size() % kProse.size()];
      const std::string tail(before % 7 == 0 ? 70 : 3, 'z');
      const std::string out =
          w.with_request(head_with(""), pad + form + tail, "application/octet-stream");
      expect_no_trace(out, kKey);
      const std::string body = field(out, "request", "body");
      ASSERT_NE(body.find(std::string(kMarker)), std::string::npos)
          << "form " << form << " before " << before;
      ASSERT_EQ(body.substr(0, pad.size()), pad) << "form " << form << " before " << before;
    }
  }
}

TEST(AccessRecordRedaction, KeysStartingWithSpaceQuoteOrPercentAreFoundInLongText) {
  for (const std::string &key : {std::string(" k1 z"), std::string("\"q\"9"),
                                 std::string("%41x"), std::string("\\b\\"), std::string("k")}) {
    for (size_t before : {size_t{0}, size_t{7}, size_t{15}, size_t{16}, size_t{31}, size_t{45}}) {
      Writer w;
      w.values = {key};
      const std::string pad(before, 'y');
      for (const std::string &form :
           {key, pct_all(key), pct_reserved(key, true), json_min(key), json_all(key)}) {
        const std::string text = pad + form + std::string(33, 'y');
        const std::string out = w.with_request(head_with(""), text, "text/plain");
        ASSERT_EQ(field(out, "request", "body"), pad + std::string(kMarker) + std::string(33, 'y'))
            << "key " << key << " form " << form << " before " << before;
      }
    }
  }
}

TEST(AccessRecordRedaction, ApiKeyMemberIsFoundAtEveryOffsetInLongBodies) {
  const std::string k(kKey);
  for (const std::string &name : {std::string("API_Key"), std::string("\\u0041PI_Key"),
                                  std::string("API\\u005fKey")}) {
    for (size_t before = 0; before <= 40; ++before) {
      Writer w;
      std::string pad = "{\"a\":\"";
      while (pad.size() < before + 6)
        pad += "xA\"\\"[pad.size() % 4]; // '"A' and '"\\' start names that fail
      pad += "\",";
      const std::string body = pad + "\"" + name + "\":\"" + k + "\"," + std::string(20, ' ') +
                               "\"" + name + "\":\"" + k.substr(0, 9);
      const std::string out = w.with_request(head_with(""), body, kJson, true);
      EXPECT_EQ(out.find(k.substr(0, 9)), std::string::npos) << body;
      ASSERT_EQ(field(out, "request", "body"),
                pad + "\"" + name + "\":\"" + std::string(kMarker) + "\"," +
                    std::string(20, ' ') + "\"" + name + "\":\"" + std::string(kMarker))
          << body;
    }
  }
}

TEST(AccessRecordRedaction, LargeBinaryBodiesParseAndKeepTheirBytes) {
  std::mt19937 rng(11);
  std::string body(64 * 1024, '\0');
  for (char &c : body)
    c = static_cast<char>(rng() & 0xff);
  Writer w;
  w.values = {kKey};
  const std::string out = w.with_request(head_with(""), body, "application/octet-stream");
  std::string expected = reference_escaped(body);
  EXPECT_NE(out.find(",\"body\":" + expected + ","), std::string::npos);
}

} // namespace
} // namespace keygate
