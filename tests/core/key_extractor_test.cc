#include "core/key_extractor.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/http_request.h"

namespace keygate {
namespace {

constexpr std::string_view kJson = "application/json";
constexpr std::string_view kForm = "application/x-www-form-urlencoded";

// A request under construction; owns the bytes the HttpRequest views point into.
struct TestRequest {
  std::string query;
  std::vector<std::pair<std::string, std::string>> header_fields;
  std::string body;

  TestRequest& header(std::string name, std::string value) {
    header_fields.emplace_back(std::move(name), std::move(value));
    return *this;
  }
  TestRequest& content_type(std::string_view type) {
    return header("Content-Type", std::string(type));
  }
  TestRequest& with_body(std::string b) {
    body = std::move(b);
    return *this;
  }
};

TestRequest get(std::string query = "") {
  TestRequest r;
  r.query = std::move(query);
  return r;
}

TestRequest post(std::string_view content_type, std::string body) {
  TestRequest r;
  r.content_type(content_type);
  r.body = std::move(body);
  return r;
}

// The outcome with the key copied out, so results of different calls can be compared.
struct Got {
  KeyOutcome outcome;
  KeySource source;
  std::string key;
};

bool operator==(const Got& a, const Got& b) {
  return a.outcome == b.outcome && a.source == b.source && a.key == b.key;
}

void PrintTo(const Got& g, std::ostream* os) {
  *os << "{outcome " << static_cast<int>(g.outcome) << ", " << key_source_name(g.source) << ", \""
      << g.key << "\"}";
}

// `t` as the request the parser would hand over (`headers` holds its header views).
HttpRequest request_of(const TestRequest& t, std::vector<HttpHeader>* headers) {
  for (const auto& [name, value] : t.header_fields) headers->push_back({name, value});
  HttpRequest request;
  request.method = t.body.empty() ? "GET" : "POST";
  request.query = t.query;
  request.headers = *headers;
  request.body = t.body;
  return request;
}

// Runs `extractor` on the request twice: with no readable padding (the body is copied) and with
// the body placed in a buffer that has kJsonPaddingBytes readable after it (parsed in place).
// Both must agree; returns the result.
Got extract_with(KeyExtractor& extractor, const TestRequest& t) {
  std::vector<HttpHeader> headers;
  HttpRequest request = request_of(t, &headers);
  const ExtractResult unpadded = extractor.extract(request, 0);
  const Got a{unpadded.outcome, unpadded.source, std::string(unpadded.key)};

  std::vector<char> padded(t.body.size() + KeyExtractor::kJsonPaddingBytes, 'x');
  std::memcpy(padded.data(), t.body.data(), t.body.size());
  request.body = std::string_view(padded.data(), t.body.size());
  const ExtractResult in_place = extractor.extract(request, KeyExtractor::kJsonPaddingBytes);
  const Got b{in_place.outcome, in_place.source, std::string(in_place.key)};

  EXPECT_EQ(a, b) << "readable_padding changed the result";
  if (a.outcome == KeyOutcome::kFound) {
    EXPECT_FALSE(a.key.empty());
    EXPECT_LE(a.key.size(), kExtractedKeyBytesMax);
  } else {
    EXPECT_EQ(a.source, KeySource::kNone);
    EXPECT_TRUE(a.key.empty());
  }
  return a;
}

Got extract(const TestRequest& t) {
  KeyExtractor extractor;
  return extract_with(extractor, t);
}

Got found(KeySource source, std::string key) {
  return {KeyOutcome::kFound, source, std::move(key)};
}
Got outcome(KeyOutcome o) { return {o, KeySource::kNone, ""}; }

const Got kMissing = outcome(KeyOutcome::kMissing);
const Got kInvalidKey = outcome(KeyOutcome::kInvalidKey);
const Got kAmbiguous = outcome(KeyOutcome::kAmbiguous);
const Got kInvalidBody = outcome(KeyOutcome::kInvalidBody);
const Got kBodyTooLarge = outcome(KeyOutcome::kBodyTooLarge);

// --- each source alone --------------------------------------------------------------------------

TEST(KeyExtractor, FindsKeyInXApiKeyHeader) {
  EXPECT_EQ(extract(get().header("X-ApiKey", "abc")), found(KeySource::kHeader, "abc"));
}

TEST(KeyExtractor, FindsKeyInQueryParameter) {
  EXPECT_EQ(extract(get("a=1&key=abc&b=2")), found(KeySource::kQuery, "abc"));
}

TEST(KeyExtractor, FindsKeyInFormField) {
  EXPECT_EQ(extract(post(kForm, "a=1&key=abc&b=2")), found(KeySource::kForm, "abc"));
}

TEST(KeyExtractor, FindsKeyInJsonRootMember) {
  EXPECT_EQ(extract(post(kJson, R"({"a":1,"API_Key":"abc","b":[true]})")),
            found(KeySource::kJson, "abc"));
}

TEST(KeyExtractor, ReportsMissingWhenNoSourceCarriesAKey) {
  EXPECT_EQ(extract(get()), kMissing);
  EXPECT_EQ(extract(get("a=1&b=2").header("Accept", "*/*")), kMissing);
  EXPECT_EQ(extract(post(kJson, R"({"a":1})")), kMissing);
  EXPECT_EQ(extract(post(kForm, "a=1")), kMissing);
}

// --- header -------------------------------------------------------------------------------------

TEST(KeyExtractor, MatchesHeaderNameCaseInsensitively) {
  EXPECT_EQ(extract(get().header("x-aPiKeY", "abc")), found(KeySource::kHeader, "abc"));
}

TEST(KeyExtractor, TrimsSpacesAndTabsAroundHeaderValue) {
  EXPECT_EQ(extract(get().header("X-ApiKey", " \t abc \t")), found(KeySource::kHeader, "abc"));
}

TEST(KeyExtractor, IgnoresOtherHeaderNames) {
  EXPECT_EQ(extract(get().header("X-Api-Key", "abc").header("ApiKey", "abc")), kMissing);
}

TEST(KeyExtractor, DoesNotDecodeHeaderValue) {
  EXPECT_EQ(extract(get().header("X-ApiKey", "a%41+b")), found(KeySource::kHeader, "a%41+b"));
}

// --- query ---------------------------------------------------------------------------------------

TEST(KeyExtractor, DecodesPercentEncodedParameterName) {
  EXPECT_EQ(extract(get("k%65y=abc")), found(KeySource::kQuery, "abc"));
  EXPECT_EQ(extract(get("%6B%65%79=abc")), found(KeySource::kQuery, "abc"));
}

TEST(KeyExtractor, DecodesParameterNameOnlyOnce) {
  EXPECT_EQ(extract(get("k%2565y=abc")), kMissing);
}

TEST(KeyExtractor, DecodesPercentEscapeInQueryValue) {
  EXPECT_EQ(extract(get("key=a%2Bb")), found(KeySource::kQuery, "a+b"));
  EXPECT_EQ(extract(get("key=%61%62%63")), found(KeySource::kQuery, "abc"));
}

TEST(KeyExtractor, DecodesPlusInQueryValueAsSpace) {
  EXPECT_EQ(extract(get("key=a+b")), found(KeySource::kQuery, "a b"));
}

TEST(KeyExtractor, DecodesQueryValueOnlyOnce) {
  EXPECT_EQ(extract(get("key=a%2541")), found(KeySource::kQuery, "a%41"));
}

TEST(KeyExtractor, KeepsEqualsSignsAfterTheFirstInQueryValue) {
  EXPECT_EQ(extract(get("key=ab==")), found(KeySource::kQuery, "ab=="));
}

TEST(KeyExtractor, TreatsParameterWithoutEqualsSignAsAbsent) {
  EXPECT_EQ(extract(get("key")), kMissing);
  EXPECT_EQ(extract(get("key&key=abc")), found(KeySource::kQuery, "abc"));
}

TEST(KeyExtractor, RejectsMalformedPercentEscapeAsInvalidKey) {
  EXPECT_EQ(extract(get("key=%G1")), kInvalidKey);
  EXPECT_EQ(extract(get("key=ab%4")), kInvalidKey);
  EXPECT_EQ(extract(get("key=ab%")), kInvalidKey);
  EXPECT_EQ(extract(post(kForm, "key=%zz")), kInvalidKey);
}

TEST(KeyExtractor, TreatsMalformedParameterNameAsSomeOtherName) {
  EXPECT_EQ(extract(get("k%G5y=abc")), kMissing);
  EXPECT_EQ(extract(get("ke%7=abc")), kMissing);
}

// --- form ----------------------------------------------------------------------------------------

TEST(KeyExtractor, AcceptsFormMediaTypeWithCharsetParameter) {
  EXPECT_EQ(extract(post("application/x-www-form-urlencoded; charset=UTF-8", "key=abc")),
            found(KeySource::kForm, "abc"));
}

TEST(KeyExtractor, ComparesMediaTypeCaseInsensitively) {
  EXPECT_EQ(extract(post("Application/X-WWW-Form-URLEncoded", "key=abc")),
            found(KeySource::kForm, "abc"));
  EXPECT_EQ(extract(post("APPLICATION/JSON ; charset=utf-8", R"({"API_Key":"abc"})")),
            found(KeySource::kJson, "abc"));
}

TEST(KeyExtractor, DecodesFormValue) {
  EXPECT_EQ(extract(post(kForm, "key=a%2Fb+c")), found(KeySource::kForm, "a/b c"));
}

// --- JSON ----------------------------------------------------------------------------------------

TEST(KeyExtractor, ComparesJsonMemberNamesAfterUnescaping) {
  EXPECT_EQ(extract(post(kJson, R"({"API\u005fKey":"abc"})")), found(KeySource::kJson, "abc"));
}

TEST(KeyExtractor, DoesNotTakeMemberNamesThatOnlyStartLikeTheKey) {
  EXPECT_EQ(extract(post(kJson, R"({"API_Ke":"x","API_Keyy":"y","API_Key\u0000":"z"})")), kMissing);
  EXPECT_EQ(extract(post(kJson, R"({"API_Ke":"x","API_K\u0065y":"abc","\u0041PI_Key":"abc"})")),
            found(KeySource::kJson, "abc"));
}

TEST(KeyExtractor, UnescapesJsonStringValue) {
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"a\u0062c"})")), found(KeySource::kJson, "abc"));
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"a\/b\"c"})")), found(KeySource::kJson, "a/b\"c"));
}

TEST(KeyExtractor, JsonKeyOnlyCountsOnRootObject) {
  EXPECT_EQ(extract(post(kJson, R"({"data":{"API_Key":"abc"}})")), kMissing);
  EXPECT_EQ(extract(post(kJson, R"({"data":[{"API_Key":"abc"}]})")), kMissing);
}

TEST(KeyExtractor, SkipsMembersBeforeAndAfterTheKey) {
  EXPECT_EQ(extract(post(kJson, R"( { "a" : {"API_Key":"x","b":[1,2,{"c":null}]} , "s":"}\"{" ,)"
                                R"( "API_Key" : "abc" , "z" : [ ] } )")),
            found(KeySource::kJson, "abc"));
}

TEST(KeyExtractor, RejectsNonStringJsonKeyAsInvalidKey) {
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":123})")), kInvalidKey);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":true})")), kInvalidKey);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":null})")), kInvalidKey);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":["abc"]})")), kInvalidKey);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":{"k":"abc"}})")), kInvalidKey);
  // Well-formed numbers that do not convert (beyond double, beyond 64 bits) are numbers too.
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":1e999})")), kInvalidKey);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":123456789012345678901234567890})")), kInvalidKey);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":-0.5E+3 })")), kInvalidKey);
}

TEST(KeyExtractor, RejectsMalformedNumberJsonKeyAsInvalidBody) {
  for (const char* body : {R"({"API_Key":01})", R"({"API_Key":1.})", R"({"API_Key":1e})",
                           R"({"API_Key":-})", R"({"API_Key":1x})", R"({"API_Key":.5})"}) {
    EXPECT_EQ(extract(post(kJson, body)), kInvalidBody) << body;
  }
}

// Escapes are checked in every member, not only in API_Key: a body with an invalid one does
// not parse, wherever it is.
TEST(KeyExtractor, RejectsInvalidEscapesInOtherMembersAsInvalidBody) {
  for (const char* body :
       {R"({"a":"\q","API_Key":"abc"})", R"({"a\q":1,"API_Key":"abc"})",
        R"({"a":"\uZZZZ","API_Key":"abc"})", R"({"a":"\ud800","API_Key":"abc"})",
        R"({"API_Key":"abc","API_Kex\q":1})", R"({"API_Key":"abc","b":"\x"})"}) {
    EXPECT_EQ(extract(post(kJson, body)), kInvalidBody) << body;
  }
  // Valid escapes elsewhere are fine.
  EXPECT_EQ(extract(post(kJson, R"({"a\n":"\u00e9\"\\","API_Key":"abc"})")).outcome,
            KeyOutcome::kFound);
}

// Only the root's members are walked (docs/architecture.md): grammar errors nested inside
// another member's value are skipped unread, and the key is still found. Pinned so that a
// change to this documented trade-off is deliberate.
TEST(KeyExtractor, SkipsNestedValuesOfOtherMembersUnread) {
  for (const char* body :
       {R"({"a":[1,,2],"API_Key":"abc"})", R"({"a":{"b":tru},"API_Key":"abc"})"}) {
    EXPECT_EQ(extract(post(kJson, body)), found(KeySource::kJson, "abc")) << body;
  }
}

TEST(KeyExtractor, RejectsTruncatedJsonAsInvalidBody) {
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"abc")")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"abc",)")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"ab)")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, R"({"a":[1,2)")), kInvalidBody);
}

TEST(KeyExtractor, RejectsJsonRootThatIsNotAnObjectAsInvalidBody) {
  EXPECT_EQ(extract(post(kJson, R"([{"API_Key":"abc"}])")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, R"("abc")")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, "42")), kInvalidBody);
}

TEST(KeyExtractor, RejectsMalformedJsonAsInvalidBody) {
  EXPECT_EQ(extract(post(kJson, R"({"API_Key" "abc"})")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, R"({"a":1,,"API_Key":"abc"})")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"abc"} {})")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"abc"}})")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"a\qc"})")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, "{\"API_Key\":\"a\tc\"}")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, "{\"API_Key\":\"\xff\"}")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":tru})")), kInvalidBody);
  EXPECT_EQ(extract(post(kJson, "not json")), kInvalidBody);
}

TEST(KeyExtractor, PrefersInvalidBodyOverInvalidKey) {
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":1,"b":)")), kInvalidBody);
}

TEST(KeyExtractor, TreatsEmptyJsonBodyAsNoBody) { EXPECT_EQ(extract(post(kJson, "")), kMissing); }

// --- names are case-sensitive --------------------------------------------------------------------

TEST(KeyExtractor, DoesNotTreatOtherCaseNamesAsCarriers) {
  EXPECT_EQ(extract(get("KEY=abc&Key=abc")), kMissing);
  EXPECT_EQ(extract(post(kForm, "KEY=abc")), kMissing);
  EXPECT_EQ(extract(post(kJson, R"({"API_KEY":"abc","api_key":"abc"})")), kMissing);
}

// --- duplicates and ambiguity --------------------------------------------------------------------

TEST(KeyExtractor, AcceptsIdenticalRepeatsInEachSource) {
  EXPECT_EQ(extract(get().header("X-ApiKey", "abc").header("x-apikey", "abc")),
            found(KeySource::kHeader, "abc"));
  EXPECT_EQ(extract(get("key=abc&key=abc")), found(KeySource::kQuery, "abc"));
  EXPECT_EQ(extract(post(kForm, "key=abc&key=abc")), found(KeySource::kForm, "abc"));
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"abc","API_Key":"abc"})")),
            found(KeySource::kJson, "abc"));
}

TEST(KeyExtractor, ComparesRepeatsAfterDecoding) {
  EXPECT_EQ(extract(get("key=abc&key=a%62c")), found(KeySource::kQuery, "abc"));
  EXPECT_EQ(extract(get("key=a+b&key=a%20b")), found(KeySource::kQuery, "a b"));
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"abc","API\u005fKey":"\u0061bc"})")),
            found(KeySource::kJson, "abc"));
}

TEST(KeyExtractor, RejectsConflictingRepeatsAsAmbiguous) {
  EXPECT_EQ(extract(get().header("X-ApiKey", "abc").header("X-ApiKey", "abd")), kAmbiguous);
  EXPECT_EQ(extract(get("key=abc&key=abd")), kAmbiguous);
  EXPECT_EQ(extract(get("key=a%62c&key=a%62d")), kAmbiguous);
  EXPECT_EQ(extract(post(kForm, "key=abc&key=abd")), kAmbiguous);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"abc","API_Key":"abd"})")), kAmbiguous);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"abc","API\u005fKey":"abd"})")), kAmbiguous);
}

TEST(KeyExtractor, RejectsHeaderAndQueryWithDifferentKeysAsAmbiguous) {
  EXPECT_EQ(extract(get("key=abd").header("X-ApiKey", "abc")), kAmbiguous);
}

TEST(KeyExtractor, AcceptsHeaderAndQueryWithTheSameKey) {
  EXPECT_EQ(extract(get("key=a%62c").header("X-ApiKey", "abc")), found(KeySource::kHeader, "abc"));
}

// A refused pair still names the first value it carried (the access log scrubs it by value).
TEST(KeyExtractor, AnAmbiguousOrMalformedPairStillReportsItsFirstValueAsSeen) {
  const auto seen = [](const TestRequest& t) {
    std::vector<HttpHeader> headers;
    const HttpRequest request = request_of(t, &headers);
    KeyExtractor extractor;
    const ExtractResult r = extractor.extract(request);
    return std::pair(r.outcome, std::string(r.seen));
  };
  EXPECT_EQ(seen(get("key=abd").header("X-ApiKey", "abc")),
            std::pair(KeyOutcome::kAmbiguous, std::string("abc")));
  EXPECT_EQ(seen(get("key=%G1").header("X-ApiKey", "abc")),
            std::pair(KeyOutcome::kInvalidKey, std::string("abc")));
  EXPECT_EQ(seen(get("key=a%62c&key=abd")), std::pair(KeyOutcome::kAmbiguous, std::string("abc")));
  EXPECT_EQ(seen(post(kJson, R"({"API_Key":"abc","API_Key":"abd"})")),
            std::pair(KeyOutcome::kAmbiguous, std::string("abc")));
  // A JSON body that stops parsing after its API_Key: the value it carried, for the log.
  EXPECT_EQ(seen(post(kJson, R"({"API_Key":"abc","n":})")),
            std::pair(KeyOutcome::kInvalidBody, std::string("abc")));
  EXPECT_EQ(seen(post(kJson, R"({"API_Key":"a\u0062c","n":[})")),
            std::pair(KeyOutcome::kInvalidBody, std::string("abc")));
  EXPECT_EQ(seen(post(kJson, R"({"n":,"API_Key":"abc"})")),
            std::pair(KeyOutcome::kInvalidBody, std::string()));
  EXPECT_EQ(seen(get("key=abc")), std::pair(KeyOutcome::kFound, std::string("abc")));
  EXPECT_EQ(seen(get("key=%G1")), std::pair(KeyOutcome::kInvalidKey, std::string()));
  EXPECT_EQ(seen(get()), std::pair(KeyOutcome::kMissing, std::string()));
}

TEST(KeyExtractor, PrefersInvalidKeyOverAmbiguous) {
  EXPECT_EQ(extract(get("key=abc&key=abd&key=%G1")), kInvalidKey);
}

// --- the body is examined only when header and query carried no key -----------------------------

TEST(KeyExtractor, IgnoresBodyWhenHeaderCarriesKey) {
  EXPECT_EQ(extract(post(kJson, "{ not json").header("X-ApiKey", "abc")),
            found(KeySource::kHeader, "abc"));
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"other"})").header("X-ApiKey", "abc")),
            found(KeySource::kHeader, "abc"));
  EXPECT_EQ(extract(post(kForm, "key=other").header("X-ApiKey", "abc")),
            found(KeySource::kHeader, "abc"));
}

TEST(KeyExtractor, IgnoresBodyWhenQueryCarriesKey) {
  TestRequest t = post(kJson, R"({"API_Key":"other")");
  t.query = "key=abc";
  EXPECT_EQ(extract(t), found(KeySource::kQuery, "abc"));
}

TEST(KeyExtractor, IgnoresOversizedBodyWhenHeaderCarriesKey) {
  KeyExtractor extractor(16);
  EXPECT_EQ(extract_with(extractor, post(kJson, std::string(100, ' ')).header("X-ApiKey", "k")),
            found(KeySource::kHeader, "k"));
}

// --- empty values --------------------------------------------------------------------------------

TEST(KeyExtractor, TreatsEmptyValuesAsAbsent) {
  EXPECT_EQ(extract(get().header("X-ApiKey", "")), kMissing);
  EXPECT_EQ(extract(get().header("X-ApiKey", "   ")), kMissing);
  EXPECT_EQ(extract(get("key=")), kMissing);
  EXPECT_EQ(extract(post(kForm, "key=")), kMissing);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":""})")), kMissing);
}

TEST(KeyExtractor, DoesNotTreatEmptyNextToNonEmptyAsAmbiguous) {
  EXPECT_EQ(extract(get("key=&key=abc&key=")), found(KeySource::kQuery, "abc"));
  EXPECT_EQ(extract(get("key=abc").header("X-ApiKey", "")), found(KeySource::kQuery, "abc"));
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":"","API_Key":"abc"})")),
            found(KeySource::kJson, "abc"));
}

TEST(KeyExtractor, ExaminesBodyWhenHeaderAndQueryAreEmpty) {
  TestRequest t = post(kForm, "key=abc").header("X-ApiKey", "");
  t.query = "key=";
  EXPECT_EQ(extract(t), found(KeySource::kForm, "abc"));
}

// --- bodies that are not sources -----------------------------------------------------------------

TEST(KeyExtractor, DoesNotReadKeyFromTextPlainBody) {
  EXPECT_EQ(extract(post("text/plain", "key=abc")), kMissing);
}

TEST(KeyExtractor, DoesNotReadKeyFromMultipartBody) {
  EXPECT_EQ(extract(post("multipart/form-data; boundary=XyZ",
                         "--XyZ\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\n"
                         "abc\r\n--XyZ--\r\n")),
            kMissing);
}

TEST(KeyExtractor, DoesNotReadKeyFromBodyWithoutContentType) {
  TestRequest t;
  t.body = "key=abc";
  EXPECT_EQ(extract(t), kMissing);
}

TEST(KeyExtractor, DoesNotTreatJsonSuffixMediaTypesAsJson) {
  EXPECT_EQ(extract(post("application/vnd.api+json", R"({"API_Key":"abc"})")), kMissing);
}

// --- limits --------------------------------------------------------------------------------------

TEST(KeyExtractor, RejectsJsonOrFormBodyOverTheInspectLimit) {
  KeyExtractor extractor(64);
  const std::string json = R"({"API_Key":"abc","pad":")" + std::string(64, 'x') + "\"}";
  EXPECT_EQ(extract_with(extractor, post(kJson, json)), kBodyTooLarge);
  EXPECT_EQ(extract_with(extractor, post(kForm, "key=abc&pad=" + std::string(64, 'x'))),
            kBodyTooLarge);
}

TEST(KeyExtractor, InspectsBodyOfExactlyTheLimit) {
  const std::string json = R"({"API_Key":"abc"})";
  KeyExtractor extractor(json.size());
  EXPECT_EQ(extract_with(extractor, post(kJson, json)), found(KeySource::kJson, "abc"));
}

TEST(KeyExtractor, DoesNotApplyTheInspectLimitToOtherBodies) {
  KeyExtractor extractor(8);
  EXPECT_EQ(extract_with(extractor, post("text/plain", std::string(100, 'x'))), kMissing);
}

TEST(KeyExtractor, DefaultInspectLimitIsOneMebibyte) {
  EXPECT_EQ(KeyExtractor().body_inspect_bytes_max(), size_t{1} << 20);
  std::string json = R"({"pad":")" + std::string((size_t{1} << 20) - 20, 'x') + "\"";
  json += R"(,"API_Key":"abc"})";
  EXPECT_GT(json.size(), size_t{1} << 20);
  EXPECT_EQ(extract(post(kJson, json)), kBodyTooLarge);
  json.erase(8, json.size() - (size_t{1} << 20));
  EXPECT_EQ(json.size(), size_t{1} << 20);
  EXPECT_EQ(extract(post(kJson, json)), found(KeySource::kJson, "abc"));
}

TEST(KeyExtractor, AcceptsKeyOfExactly256Bytes) {
  const std::string key(256, 'k');
  EXPECT_EQ(extract(get().header("X-ApiKey", key)), found(KeySource::kHeader, key));
  EXPECT_EQ(extract(get("key=" + std::string(255, 'k') + "%6B")), found(KeySource::kQuery, key));
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":")" + std::string(255, 'k') + R"(\u006b"})")),
            found(KeySource::kJson, key));
}

TEST(KeyExtractor, RejectsDecodedKeyLongerThan256BytesAsInvalidKey) {
  EXPECT_EQ(extract(get("key=" + std::string(256, 'k') + "%6B")), kInvalidKey);
  EXPECT_EQ(extract(post(kForm, "key=+" + std::string(256, 'k'))), kInvalidKey);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":")" + std::string(256, 'k') + R"(\u006b"})")),
            kInvalidKey);
}

TEST(KeyExtractor, RejectsUndecodedKeyLongerThan256BytesAsInvalidKey) {
  const std::string key(257, 'k');
  EXPECT_EQ(extract(get().header("X-ApiKey", key)), kInvalidKey);
  EXPECT_EQ(extract(get("key=" + key)), kInvalidKey);
  EXPECT_EQ(extract(post(kJson, R"({"API_Key":")" + key + "\"}")), kInvalidKey);
}

// --- zero copy and scratch reuse -----------------------------------------------------------------

bool points_into(std::string_view inner, std::string_view outer) {
  return inner.data() >= outer.data() && inner.data() + inner.size() <= outer.data() + outer.size();
}

TEST(KeyExtractor, ReturnsViewsIntoTheRequestWhenNothingIsDecoded) {
  KeyExtractor extractor;
  const HttpHeader headers[] = {{"Content-Type", "application/json"}, {"X-ApiKey", " abc "}};
  HttpRequest request;
  request.headers = headers;
  ExtractResult r = extractor.extract(request);
  ASSERT_EQ(r.outcome, KeyOutcome::kFound);
  EXPECT_TRUE(points_into(r.key, headers[1].value));

  const std::string query = "a=1&key=abc";
  request.headers = std::span<const HttpHeader>(headers, 1);
  request.query = query;
  r = extractor.extract(request);
  ASSERT_EQ(r.outcome, KeyOutcome::kFound);
  EXPECT_TRUE(points_into(r.key, query));

  const std::string body = R"({"API_Key":"abc"})";
  request.query = {};
  request.body = body;
  r = extractor.extract(request, 0);  // parsed from the padded copy, reported in the body
  ASSERT_EQ(r.outcome, KeyOutcome::kFound);
  EXPECT_EQ(r.key, "abc");
  EXPECT_TRUE(points_into(r.key, body));
}

TEST(KeyExtractor, KeepsEarlierResultsIndependentOfTheRequestAfterDecoding) {
  KeyExtractor extractor;
  std::string query = "key=a%62c";
  HttpRequest request;
  request.query = query;
  const ExtractResult r = extractor.extract(request);
  ASSERT_EQ(r.outcome, KeyOutcome::kFound);
  EXPECT_FALSE(points_into(r.key, query));
  query.assign(query.size(), '#');
  EXPECT_EQ(r.key, "abc");
}

TEST(KeyExtractor, GivesTheSameResultsWhenReusedAcrossRequests) {
  KeyExtractor extractor;
  const std::vector<std::pair<TestRequest, Got>> cases = {
      {post(kJson, R"({"API_Key":"a\u0062c"})"), found(KeySource::kJson, "abc")},
      {get("key=x%79z"), found(KeySource::kQuery, "xyz")},
      {post(kJson, R"({"API_Key":"abc")"), kInvalidBody},
      {post(kForm, "key=%41&key=A"), found(KeySource::kForm, "A")},
      {post(kJson, R"({"API_Key":"xyz"})"), found(KeySource::kJson, "xyz")},
      {get().header("X-ApiKey", "h"), found(KeySource::kHeader, "h")},
  };
  for (int round = 0; round < 3; ++round) {
    for (const auto& [request, expected] : cases) {
      EXPECT_EQ(extract_with(extractor, request), expected);
    }
  }
}

TEST(KeyExtractor, GivesTheSameResultWithAndWithoutReadablePadding) {
  // extract_with() checks this for every test; here with padding far past kJsonPaddingBytes.
  KeyExtractor extractor;
  const std::string body = R"({"x":"y","API\u005fKey":"k\u0065y"})";
  std::vector<char> buffer(body.size() + 4096, '}');
  std::memcpy(buffer.data(), body.data(), body.size());
  const HttpHeader headers[] = {{"content-type", "application/json"}};
  HttpRequest request;
  request.headers = headers;
  request.body = std::string_view(buffer.data(), body.size());
  const std::string padded(extractor.extract(request, 4096).key);
  request.body = body;
  const std::string unpadded(extractor.extract(request, 0).key);
  EXPECT_EQ(padded, "key");
  EXPECT_EQ(unpadded, "key");
}

TEST(KeyExtractor, GivesTheSameResultWhateverBytesFollowTheBody) {
  // simdjson peeks at the first byte past the body when malformed input runs it off the end.
  const std::vector<std::string> bodies = {R"({"a"::1}})",
                                           R"({"a":,1}})",
                                           R"({"a":}})",
                                           R"({"a":{"b":1})",
                                           R"({"a":"b":"c"})",
                                           R"({"a":"b":1]})",
                                           R"({"API_Key":"k":1]})",
                                           R"({"API_Key":"k"}})",
                                           R"({"API_Key":"k","a":[1,{}})",
                                           R"({"a":1})"};
  KeyExtractor extractor;
  const HttpHeader headers[] = {{"Content-Type", "application/json"}};
  HttpRequest request;
  request.headers = headers;
  for (const std::string& body : bodies) {
    request.body = body;
    const ExtractResult unpadded = extractor.extract(request, 0);
    const KeyOutcome expected =
        body == R"({"a":1})" ? KeyOutcome::kMissing : KeyOutcome::kInvalidBody;
    EXPECT_EQ(unpadded.outcome, expected) << body;
    for (const char fill : {'}', ']', ',', '"', ' '}) {
      std::vector<char> buffer(body.size() + KeyExtractor::kJsonPaddingBytes, fill);
      std::memcpy(buffer.data(), body.data(), body.size());
      request.body = std::string_view(buffer.data(), body.size());
      EXPECT_EQ(extractor.extract(request, KeyExtractor::kJsonPaddingBytes).outcome, expected)
          << body << " followed by " << fill;
    }
  }
}

// --- outcome mapping -----------------------------------------------------------------------------

TEST(KeyExtractor, MapsEachRejectionToItsStatusAndCode) {
  EXPECT_EQ(key_rejection(KeyOutcome::kFound).status, 0);
  EXPECT_EQ(key_rejection(KeyOutcome::kMissing).status, 401);
  EXPECT_EQ(key_rejection(KeyOutcome::kMissing).code, "missing_api_key");
  EXPECT_EQ(key_rejection(KeyOutcome::kInvalidKey).status, 401);
  EXPECT_EQ(key_rejection(KeyOutcome::kInvalidKey).code, "invalid_api_key");
  EXPECT_EQ(key_rejection(KeyOutcome::kAmbiguous).status, 401);
  EXPECT_EQ(key_rejection(KeyOutcome::kAmbiguous).code, "ambiguous_api_key");
  EXPECT_EQ(key_rejection(KeyOutcome::kInvalidBody).status, 400);
  EXPECT_EQ(key_rejection(KeyOutcome::kInvalidBody).code, "invalid_body");
  EXPECT_EQ(key_rejection(KeyOutcome::kBodyTooLarge).status, 413);
  EXPECT_EQ(key_rejection(KeyOutcome::kBodyTooLarge).code, "body_too_large");
  EXPECT_FALSE(key_rejection(KeyOutcome::kMissing).message.empty());
}


// A body read only in part (the worker kept a prefix and dropped the rest: body_bytes_dropped)
// is judged by its whole length when it must be searched: 413, also for an empty prefix. When
// the header or the query carries the key, or the body cannot carry one, it is never looked at.
TEST(KeyExtractor, ABodyReadOnlyInPartIsTooLargeWhenItMustBeSearched) {
  KeyExtractor extractor(64);
  std::vector<HttpHeader> json = {{"Content-Type", "application/json"}};
  HttpRequest request;
  request.method = "POST";
  request.headers = json;
  request.body = "{\"API_Key\":\"abc\"}";
  request.body_bytes_dropped = 1;
  EXPECT_EQ(extractor.extract(request).outcome, KeyOutcome::kBodyTooLarge);
  request.body = {};
  request.body_bytes_dropped = 100;
  EXPECT_EQ(extractor.extract(request).outcome, KeyOutcome::kBodyTooLarge);
  std::vector<HttpHeader> with_key = {{"Content-Type", "application/json"}, {"X-ApiKey", "k1"}};
  request.headers = with_key;
  const ExtractResult found = extractor.extract(request);
  EXPECT_EQ(found.outcome, KeyOutcome::kFound);
  EXPECT_EQ(found.key, "k1");
  std::vector<HttpHeader> text = {{"Content-Type", "text/plain"}};
  request.headers = text;
  EXPECT_EQ(extractor.extract(request).outcome, KeyOutcome::kMissing);
}

}  // namespace
}  // namespace keygate
