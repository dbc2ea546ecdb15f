// Integration tests of the access log: the real keygate binary writing
// `access-<seq>.jsonl` segments into its --log-dir, read back byte for byte by
// the test.
//
//   - AccessLogRecords: one record per request on both listeners (allowed,
//   every rejection, a
//     parse error, admin, proxied), with the fields the brief promises and
//     increasing seqs.
//   - AccessLogCapture: log_request / log_response captures (heads and bodies,
//   the
//     capture_bytes_max cut) and their absence for keys without the flags.
//   - AccessLogRedaction: keys sent every way a client can send them (headers,
//   query, form,
//     JSON, escapes, truncation, admin create/rotate) never reach any file of
//     the log dir, in any encoding, and markers stand where they were.
//   - AccessLogSequence: N sequential requests give exactly N records with
//   consecutive seqs.
//   - AccessLogRestart: after SIGKILL and a torn tail, a restarted server
//   continues the seqs.
//   - Clients that leave: admin creates reset right after sending (every
//   created key has its record), data requests abandoned mid-body (one 499).
//   - A body the upstream answered before it was all sent: marked truncated.
//
// The log is written asynchronously; tests poll the files with a deadline or
// stop the server (SIGTERM drains and flushes). Every process started here is
// stopped by its owner's destructor (TestServer, ChildProcess).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "tests/integration/process_helper.h"
#include "tests/integration/send_queue.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kBootstrapAdminKey =
    "access-log-test-bootstrap-admin-0123";

// --- A small JSON reader (records are compact JSON, one per line)
// ----------------------------

struct Json {
  enum class Type { kNull, kBool, kNumber, kString, kObject, kArray };
  Type type = Type::kNull;
  bool boolean = false;
  int64_t number = 0;
  std::string string;
  // An object's members as two parallel vectors: a vector of the still incomplete Json is
  // fine, a pair holding one is not (clang rejects it).
  std::vector<std::string> member_names;
  std::vector<Json> member_values;
  std::vector<Json> items;

  const Json *find(std::string_view name) const {
    for (size_t i = 0; i < member_names.size(); ++i) {
      if (member_names[i] == name)
        return &member_values[i];
    }
    return nullptr;
  }
  bool has(std::string_view name) const { return find(name) != nullptr; }
  bool is_null(std::string_view name) const {
    const Json *v = find(name);
    return v != nullptr && v->type == Type::kNull;
  }
  // The string member `name`; "<absent>" / "<null>" / "<not a string>"
  // otherwise, so a comparison in an assertion shows what was there.
  std::string str(std::string_view name) const {
    const Json *v = find(name);
    if (v == nullptr)
      return "<absent>";
    if (v->type == Type::kNull)
      return "<null>";
    if (v->type != Type::kString)
      return "<not a string>";
    return v->string;
  }
  int64_t num(std::string_view name) const {
    const Json *v = find(name);
    return v != nullptr && v->type == Type::kNumber ? v->number : -1;
  }
};

class JsonReader {
public:
  explicit JsonReader(std::string_view text) : t_(text) {}

  bool parse(Json *out) {
    if (!value(out, 0))
      return false;
    ws();
    return p_ == t_.size();
  }

private:
  void ws() {
    while (p_ < t_.size() && (t_[p_] == ' ' || t_[p_] == '\t' ||
                              t_[p_] == '\n' || t_[p_] == '\r')) {
      ++p_;
    }
  }
  bool lit(std::string_view s) {
    if (t_.substr(p_, s.size()) != s)
      return false;
    p_ += s.size();
    return true;
  }
  bool value(Json *out, int depth) {
    if (depth > 64)
      return false;
    ws();
    if (p_ >= t_.size())
      return false;
    const char c = t_[p_];
    if (c == '{') {
      ++p_;
      out->type = Json::Type::kObject;
      ws();
      if (lit("}"))
        return true;
      for (;;) {
        ws();
        std::string name;
        if (!string(&name))
          return false;
        ws();
        if (!lit(":"))
          return false;
        Json v;
        if (!value(&v, depth + 1))
          return false;
        out->member_names.push_back(std::move(name));
        out->member_values.push_back(std::move(v));
        ws();
        if (lit(","))
          continue;
        return lit("}");
      }
    }
    if (c == '[') {
      ++p_;
      out->type = Json::Type::kArray;
      ws();
      if (lit("]"))
        return true;
      for (;;) {
        Json v;
        if (!value(&v, depth + 1))
          return false;
        out->items.push_back(std::move(v));
        ws();
        if (lit(","))
          continue;
        return lit("]");
      }
    }
    if (c == '"') {
      out->type = Json::Type::kString;
      return string(&out->string);
    }
    if (lit("true")) {
      out->type = Json::Type::kBool;
      out->boolean = true;
      return true;
    }
    if (lit("false")) {
      out->type = Json::Type::kBool;
      return true;
    }
    if (lit("null"))
      return true;
    out->type = Json::Type::kNumber;
    bool negative = lit("-");
    const size_t digits_at = p_;
    int64_t v = 0;
    while (p_ < t_.size() && t_[p_] >= '0' && t_[p_] <= '9')
      v = v * 10 + (t_[p_++] - '0');
    if (p_ == digits_at)
      return false;
    // Records hold integers only; a fraction or exponent is read past and
    // ignored.
    while (p_ < t_.size() && std::string_view(".eE+-0123456789").find(t_[p_]) !=
                                 std::string_view::npos) {
      ++p_;
    }
    out->number = negative ? -v : v;
    return true;
  }
  static int hex_digit(char c) {
    if (c >= '0' && c <= '9')
      return c - '0';
    if (c >= 'a' && c <= 'f')
      return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
      return c - 'A' + 10;
    return -1;
  }
  bool string(std::string *out) {
    if (!lit("\""))
      return false;
    while (p_ < t_.size()) {
      const char c = t_[p_++];
      if (c == '"')
        return true;
      if (static_cast<unsigned char>(c) < 0x20)
        return false;
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (p_ >= t_.size())
        return false;
      const char e = t_[p_++];
      switch (e) {
      case '"':
        out->push_back('"');
        break;
      case '\\':
        out->push_back('\\');
        break;
      case '/':
        out->push_back('/');
        break;
      case 'b':
        out->push_back('\b');
        break;
      case 'f':
        out->push_back('\f');
        break;
      case 'n':
        out->push_back('\n');
        break;
      case 'r':
        out->push_back('\r');
        break;
      case 't':
        out->push_back('\t');
        break;
      case 'u': {
        if (p_ + 4 > t_.size())
          return false;
        unsigned cp = 0;
        for (int i = 0; i < 4; ++i) {
          const int d = hex_digit(t_[p_++]);
          if (d < 0)
            return false;
          cp = cp * 16 + static_cast<unsigned>(d);
        }
        // keygate writes a byte it could not pass through as \u00XX of that
        // byte.
        if (cp < 0x100) {
          out->push_back(static_cast<char>(cp));
        } else if (cp < 0x800) {
          out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
          out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else {
          out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
          out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
          out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
        break;
      }
      default:
        return false;
      }
    }
    return false;
  }

  std::string_view t_;
  size_t p_ = 0;
};

std::optional<Json> parse_json(std::string_view text) {
  Json j;
  JsonReader reader(text);
  if (!reader.parse(&j))
    return std::nullopt;
  return j;
}

// --- Encodings of a key, as a client may send it and as a log line could hold
// it -------------

std::string percent_encoded(std::string_view s, bool upper) {
  const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    out += '%';
    out += digits[u >> 4];
    out += digits[u & 15];
  }
  return out;
}

// application/x-www-form-urlencoded as a browser writes it.
std::string form_encoded(std::string_view s) {
  std::string out;
  for (char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
        c == '*') {
      out += c;
    } else if (c == ' ') {
      out += '+';
    } else {
      out += percent_encoded(std::string_view(&c, 1), true);
    }
  }
  return out;
}

// As a JSON encoder writes a string's content (no quotes); `slash`: '/' as
// "\/".
std::string json_escaped(std::string_view s, bool slash = false) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '/' && slash) {
      out += "\\/";
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out +=
          "\\u00" + percent_encoded(std::string_view(&c, 1), false).substr(1);
    } else {
      out += c;
    }
  }
  return out;
}

// Every character as \u00XX.
std::string unicode_escaped(std::string_view s, bool upper) {
  std::string out;
  for (char c : s)
    out += "\\u00" + percent_encoded(std::string_view(&c, 1), upper).substr(1);
  return out;
}

// Every form of `key` that must not occur in the log's bytes: raw,
// percent-encoded (both hex cases), form-encoded, JSON-escaped (with and
// without "\/"), \u-escaped; and each of those as the log's own JSON escaping
// would write it inside a record.
std::vector<std::string> forbidden_forms(std::string_view key) {
  std::set<std::string> forms = {std::string(key),
                                 percent_encoded(key, false),
                                 percent_encoded(key, true),
                                 form_encoded(key),
                                 json_escaped(key),
                                 json_escaped(key, true),
                                 unicode_escaped(key, false),
                                 unicode_escaped(key, true)};
  std::set<std::string> in_log;
  for (const std::string &f : forms)
    in_log.insert(json_escaped(f));
  forms.insert(in_log.begin(), in_log.end());
  return {forms.begin(), forms.end()};
}

// --- Reading the log directory
// -----------------------------------------------------------------

std::string read_file(const std::string &path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// The segment files, oldest first (names carry the zero-padded first seq).
std::vector<std::string> segment_files(const std::string &dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto &e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && name.starts_with("access-") &&
        name.ends_with(".jsonl")) {
      out.push_back(e.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every byte of every regular file under `dir`, whatever its name.
std::string all_bytes_under(const std::string &dir, size_t *files) {
  std::string out;
  *files = 0;
  std::error_code ec;
  for (const auto &e : std::filesystem::recursive_directory_iterator(dir, ec)) {
    if (!e.is_regular_file())
      continue;
    ++*files;
    out += read_file(e.path().string());
    out += '\n';
  }
  return out;
}

struct LogLine {
  std::string text;
  Json json;
};

struct LogContents {
  std::vector<LogLine> lines; // complete lines, in file order
  std::vector<std::string>
      bad_lines; // complete lines that are not JSON objects
  std::vector<std::string>
      unterminated; // a file's last bytes without a newline
  std::vector<const Json *> records() const {
    std::vector<const Json *> out;
    for (const LogLine &l : lines) {
      if (!l.json.has("type"))
        out.push_back(&l.json);
    }
    return out;
  }
  size_t markers() const {
    size_t n = 0;
    for (const LogLine &l : lines)
      n += l.json.has("type") ? 1 : 0;
    return n;
  }
};

LogContents read_log(const std::string &dir) {
  LogContents out;
  for (const std::string &file : segment_files(dir)) {
    const std::string text = read_file(file);
    size_t pos = 0;
    while (pos < text.size()) {
      const size_t eol = text.find('\n', pos);
      if (eol == std::string::npos) {
        out.unterminated.push_back(text.substr(pos));
        break;
      }
      std::string line = text.substr(pos, eol - pos);
      pos = eol + 1;
      std::optional<Json> j = parse_json(line);
      if (!j || j->type != Json::Type::kObject) {
        out.bad_lines.push_back(std::move(line));
        continue;
      }
      out.lines.push_back({std::move(line), std::move(*j)});
    }
  }
  return out;
}

// Polls until the log holds at least `n` records (markers not counted) or
// `timeout` passes.
LogContents wait_for_records(const std::string &dir, size_t n,
                             Millis timeout = Millis(5000)) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    LogContents log = read_log(dir);
    if (log.records().size() >= n || Clock::now() >= deadline)
      return log;
    std::this_thread::sleep_for(Millis(20));
  }
}

// Whether some record's "path" is `path`, query included.
bool has_record_with_path(const LogContents &log, std::string_view path) {
  for (const Json *r : log.records()) {
    if (r->str("path") == path)
      return true;
  }
  return false;
}

// Every byte of every file under the log directory `dir` (at least one file) holds no form of
// any of `secrets` (forbidden_forms).
void expect_no_form_of(const std::string &dir, std::initializer_list<std::string_view> secrets) {
  size_t files = 0;
  const std::string bytes = all_bytes_under(dir, &files);
  EXPECT_GT(files, 0u) << "no file under " << dir;
  for (const std::string_view secret : secrets) {
    for (const std::string &form : forbidden_forms(secret))
      EXPECT_EQ(bytes.find(form), std::string::npos) << "the log holds " << form;
  }
}

// The record whose "path" is `path` up to its query; null when none or several.
const Json *record_for(const LogContents &log, std::string_view path) {
  const Json *found = nullptr;
  for (const Json *r : log.records()) {
    const std::string p = r->str("path");
    if (std::string_view(p).substr(0, p.find('?')) != path)
      continue;
    if (found != nullptr)
      return nullptr;
    found = r;
  }
  return found;
}

std::string captured(const Json &record, std::string_view which,
                     std::string_view part) {
  const Json *m = record.find(which);
  if (m == nullptr)
    return "<no " + std::string(which) + ">";
  return m->str(part);
}

// A captured message's body_truncated: 1 / 0, or -1 when the capture or the
// member is missing.
int truncated_flag(const Json &record, std::string_view which) {
  const Json *m = record.find(which);
  const Json *t = m == nullptr ? nullptr : m->find("body_truncated");
  if (t == nullptr || t->type != Json::Type::kBool)
    return -1;
  return t->boolean ? 1 : 0;
}

std::string key_array(const std::vector<std::string> &apis) {
  std::string out = "[";
  for (const std::string &a : apis)
    out += (out.size() > 1 ? ",\"" : "\"") + a + "\"";
  return out + "]";
}

// The head of a raw request or response (through the blank line).
std::string head_of(std::string_view raw) {
  const size_t end = raw.find("\r\n\r\n");
  return std::string(
      raw.substr(0, end == std::string_view::npos ? raw.size() : end + 4));
}

// --- Fixture
// -----------------------------------------------------------------------------------

struct CreatedKey {
  std::string id;
  std::string value;
};

class AccessLogTest : public ::testing::Test {
protected:
  // keygate-upstream, then keygate with kOrdersAndBillingApis plus "proxied"
  // (/echo, /bytes) forwarded to it, kBootstrapAdminKey as the admin key and
  // `log_config` as the [log] table's lines. Empty dirs: the server's own temp
  // dir.
  void start(unsigned workers, const std::string &log_config,
             const std::string &data_dir = {},
             const std::string &log_dir = {},
             std::vector<std::pair<std::string, uint64_t>> limits = {}) {
    if (upstream_ == nullptr) {
      std::string line, error;
      upstream_ = start_process_with_ready_line(KEYGATE_UPSTREAM_BINARY,
                                                {"--listen", "127.0.0.1:0"},
                                                "listening on ", &line, &error);
      ASSERT_NE(upstream_, nullptr) << error;
      upstream_addr_ = line.substr(std::string_view("listening on ").size());
    }
    ServerOptions options =
        admin_server_options(std::string(kBootstrapAdminKey));
    options.workers = workers;
    options.data_dir = data_dir;
    options.log_dir = log_dir;
    options.limits = std::move(limits);
    options.wrapper = wrapper_;
    options.extra_config +=
        "\n[[apis]]\nname = \"proxied\"\nroutes = [\"/echo\", \"/bytes\"]\n"
        "upstreams = [\"" +
        upstream_addr_ + "\"]\n\n[log]\n" + log_config + "\n";
    server_ = std::make_unique<TestServer>(options);
    std::string error;
    ASSERT_TRUE(server_->start(&error))
        << error << "\nstderr: " << server_->error_output();
  }

  // One request on a fresh data-port connection, its response read whole:
  // framed by Content-Length, or chunked (the upstream's /echo; keygate keeps
  // the connection open, so the last chunk ends it). A chunked response's
  // `body` holds the chunked framing as sent.
  std::optional<Response> data(std::string_view request) {
    RawClient client;
    if (!client.connect(server_->data_port()) || !client.send(request))
      return std::nullopt;
    std::optional<Response> r =
        client.read_response(Millis(3000), /*head=*/true);
    if (!r)
      return r;
    const std::optional<std::string> te = r->header("Transfer-Encoding");
    const std::optional<std::string> cl = r->header("Content-Length");
    const bool chunked = te && *te == "chunked";
    const size_t length = cl ? std::stoul(*cl) : 0;
    auto complete = [&](const std::string &b) {
      return chunked ? b.ends_with("0\r\n\r\n") : b.size() >= length;
    };
    const auto deadline = Clock::now() + Millis(3000);
    std::string body; // read_until_close() hands out what was buffered too
    while (!complete(body) && Clock::now() < deadline) {
      body += client.read_until_close(Millis(20));
      if (client.last_end() != ReadEnd::kTimeout)
        break;
    }
    if (!complete(body))
      return std::nullopt;
    r->body = body;
    r->raw += body;
    return r;
  }
  std::optional<Response> admin(std::string_view method,
                                std::string_view target,
                                std::string_view admin_key,
                                std::string_view body = {}) {
    std::vector<std::string> headers = {"X-ApiKey: " + std::string(admin_key)};
    if (!body.empty())
      headers.push_back("Content-Type: application/json");
    return round_trip(server_->admin_port(),
                      http_request(method, target, headers, body));
  }

  // `key` as a JSON string literal, "/" written as "\/".
  static std::string json_key(std::string_view key) {
    return "\"" + json_escaped(key, true) + "\"";
  }

  // POST /admin/keys with `key_json` as the "key" member's JSON text ("" =
  // generated value) and `description` (when not empty) as the description.
  // Returns the id and the plaintext the response shows; an empty id (and a
  // test failure) when the create failed.
  CreatedKey create_key(std::string_view admin_key, std::string_view key_json,
                        const std::vector<std::string> &apis, bool log_request,
                        bool log_response, std::string_view description = {}) {
    std::string body = "{";
    if (!key_json.empty())
      body += "\"key\":" + std::string(key_json) + ",";
    if (!description.empty())
      body += "\"description\":" + json_key(description) + ",";
    body += "\"apis\":" + key_array(apis) +
            ",\"log_request\":" + (log_request ? "true" : "false") +
            ",\"log_response\":" + (log_response ? "true" : "false") + "}";
    auto r = admin("POST", "/admin/keys", admin_key, body);
    if (!r || r->status != 201) {
      ADD_FAILURE() << "create key failed: " << show(r)
                    << "\nrequest body: " << body;
      return {};
    }
    return {string_member(r->body, "id"), string_member(r->body, "key")};
  }

  // What start() runs keygate under (ServerOptions::wrapper); empty: nothing.
  std::vector<std::string> wrapper_;
  std::unique_ptr<ChildProcess> upstream_;
  std::string upstream_addr_;
  // Data and log dirs that outlive one server (restart tests); removed after
  // server_ stops.
  std::unique_ptr<TempDir> dirs_;
  std::unique_ptr<TestServer> server_;
};

// --- 1. Record contents
// ------------------------------------------------------------------------

TEST_F(AccessLogTest, RecordsEveryOutcomeOnBothListenersWithIncreasingSeq) {
  // One worker: records reach its ring in request order, so seq order is
  // request order.
  ASSERT_NO_FATAL_FAILURE(start(1, ""));
  ASSERT_TRUE(server_->wait_for_error_output("from KEYGATE_BOOTSTRAP_ADMIN_KEY",
                                             Millis(3000)));
  const std::string &err = server_->error_output();
  const size_t id_at = err.find("created admin key ") +
                       std::string_view("created admin key ").size();
  const std::string bootstrap_id =
      err.substr(id_at, err.find(' ', id_at) - id_at);

  struct Expect {
    std::string listener, method, path;
    int status;
    std::string key_id; // "" = null
    std::string api;    // "" = not checked ("<null>" = must be null)
    std::string reason; // "" = null
    std::string request;
  };
  std::vector<Expect> expected;
  std::vector<std::optional<Response>> responses; // one per expected record
  auto send_data = [&](Expect e) {
    responses.push_back(data(e.request));
    expected.push_back(std::move(e));
  };

  const std::string ok_key = "alog-rec-ok-" + random_hex(20);
  const std::string billing_key = "alog-rec-billing-" + random_hex(20);
  const std::string create_ok =
      "{\"key\":\"" + ok_key + "\",\"apis\":[\"orders\",\"proxied\"]}";
  const std::string create_billing =
      "{\"key\":\"" + billing_key + "\",\"apis\":[\"billing\"]}";
  for (const std::string &body : {create_ok, create_billing}) {
    Expect e{"admin", "POST", "/admin/keys", 201, bootstrap_id, "admin",
             "",      ""};
    e.request = http_request("POST", "/admin/keys",
                             {"X-ApiKey: " + std::string(kBootstrapAdminKey),
                              "Content-Type: application/json"},
                             body);
    responses.push_back(round_trip(server_->admin_port(), e.request));
    ASSERT_TRUE(responses.back() && responses.back()->status == 201)
        << show(responses.back());
    expected.push_back(std::move(e));
  }
  const std::string ok_id = string_member(responses[0]->body, "id");
  const std::string billing_id = string_member(responses[1]->body, "id");

  send_data({"data", "GET", "/orders/1", 200, ok_id, "orders", "",
             http_request("GET", "/orders/1", {"X-ApiKey: " + ok_key})});
  send_data({"data", "GET", "/orders/2", 401, "", "", "missing_api_key",
             http_request("GET", "/orders/2")});
  send_data({"data", "GET", "/orders/3", 401, "", "", "invalid_api_key",
             http_request("GET", "/orders/3",
                          {"X-ApiKey: not-a-key-" + random_hex(8)})});
  send_data({"data", "GET", "/orders/4", 403, billing_id, "orders",
             "api_not_permitted",
             http_request("GET", "/orders/4", {"X-ApiKey: " + billing_key})});
  send_data({"data", "GET", "/nowhere/5", 404, "", "", "no_route",
             http_request("GET", "/nowhere/5", {"X-ApiKey: " + ok_key})});
  // A header line without a colon: the parser rejects it; the record has no
  // method or target.
  send_data({"data", "", "", 400, "", "", "*",
             "GET /orders/6 HTTP/1.1\r\nHost: it\r\nNo Colon Here\r\n\r\n"});
  {
    Expect e{"admin", "GET", "/admin/keys", 200, bootstrap_id, "admin", "", ""};
    e.request = http_request("GET", "/admin/keys",
                             {"X-ApiKey: " + std::string(kBootstrapAdminKey)});
    responses.push_back(round_trip(server_->admin_port(), e.request));
    expected.push_back(std::move(e));
  }
  {
    // An admin API error: its code is the record's reason, as on the data port.
    Expect e{"admin", "GET", "/admin/keys/no-such-id", 404, bootstrap_id, "admin", "not_found", ""};
    e.request = http_request("GET", "/admin/keys/no-such-id",
                             {"X-ApiKey: " + std::string(kBootstrapAdminKey)});
    responses.push_back(round_trip(server_->admin_port(), e.request));
    expected.push_back(std::move(e));
  }
  send_data({"data", "GET", "/bytes/100", 200, ok_id, "proxied", "",
             http_request("GET", "/bytes/100", {"X-ApiKey: " + ok_key})});

  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_TRUE(responses[i].has_value()) << "no response to:\n"
                                          << expected[i].request;
    ASSERT_EQ(responses[i]->status, expected[i].status) << responses[i]->raw;
  }

  const LogContents log = wait_for_records(server_->log_dir(), expected.size());
  const std::vector<const Json *> records = log.records();
  ASSERT_EQ(records.size(), expected.size()) << "records: " << records.size();
  EXPECT_TRUE(log.bad_lines.empty()) << log.bad_lines.front();
  EXPECT_EQ(log.markers(), 0u);
  for (size_t i = 0; i < expected.size(); ++i) {
    const Expect &e = expected[i];
    const Json &r = *records[i];
    SCOPED_TRACE("record " + std::to_string(i) + " for " + e.method + " " +
                 e.path + ": " + log.lines[i].text);
    if (i > 0) {
      EXPECT_EQ(r.num("seq"), records[i - 1]->num("seq") + 1)
          << "seqs not consecutive";
    }
    EXPECT_GE(r.num("seq"), 0);
    EXPECT_EQ(r.str("listener"), e.listener);
    EXPECT_EQ(r.num("status"), e.status);
    EXPECT_EQ(r.str("method"), e.method);
    EXPECT_EQ(r.str("path"), e.path);
    if (e.key_id.empty()) {
      EXPECT_TRUE(r.is_null("key_id"));
    } else {
      EXPECT_EQ(r.str("key_id"), e.key_id);
    }
    if (!e.api.empty()) {
      EXPECT_EQ(r.str("api"), e.api);
    }
    if (e.reason.empty()) {
      EXPECT_TRUE(r.is_null("reason"));
    } else if (e.reason == "*") {
      EXPECT_FALSE(r.str("reason").empty());
      EXPECT_EQ(r.find("reason")->type, Json::Type::kString);
    } else {
      EXPECT_EQ(r.str("reason"), e.reason);
    }
    EXPECT_TRUE(r.is_null("user"));
    EXPECT_GT(r.num("bytes_in"), 0);
    if (!e.method.empty()) {
      EXPECT_EQ(r.num("bytes_in"), static_cast<int64_t>(e.request.size()));
    }
    EXPECT_EQ(r.num("bytes_out"),
              static_cast<int64_t>(responses[i]->raw.size()));
    EXPECT_GT(r.num("time_us"), int64_t{1'600'000'000} * 1'000'000);
    EXPECT_GE(r.num("duration_us"), 0);
    EXPECT_GE(r.num("request_id"), 0);
    EXPECT_EQ(r.num("worker"), 0);
    EXPECT_TRUE(r.str("client").starts_with("127.0.0.1:")) << r.str("client");
    EXPECT_FALSE(r.has("request")) << "no key here logs requests";
    EXPECT_FALSE(r.has("response"));
  }
  // Request ids are unique.
  std::set<int64_t> ids;
  for (const Json *r : records)
    ids.insert(r->num("request_id"));
  EXPECT_EQ(ids.size(), records.size());
}

// --- 2. Captures
// -------------------------------------------------------------------------------

TEST_F(AccessLogTest, CapturesRequestAndResponseForFlaggedKeysOnly) {
  ASSERT_NO_FATAL_FAILURE(start(2, "capture_bytes_max = 1000"));
  const std::string cap_key = "alog-cap-" + random_hex(24);
  const std::string plain_key = "alog-nocap-" + random_hex(24);
  const CreatedKey cap = create_key(kBootstrapAdminKey, json_key(cap_key),
                                    {"orders", "proxied"}, true, true);
  const CreatedKey plain = create_key(kBootstrapAdminKey, json_key(plain_key),
                                      {"orders", "proxied"}, false, false);
  ASSERT_FALSE(cap.id.empty());
  ASSERT_FALSE(plain.id.empty());
  const std::string marker = "[redacted:" + cap.id + "]";

  // Small body, written by keygate: both sides captured exactly (key header
  // redacted).
  const std::string small_body = "hello capture body";
  const std::string small_req = http_request(
      "POST", "/orders/small",
      {"X-ApiKey: " + cap_key, "Content-Type: text/plain"}, small_body);
  auto small = data(small_req);
  ASSERT_TRUE(small && small->status == 200) << show(small);
  // Exactly capture_bytes_max: not truncated. One more: truncated.
  const std::string exact_body = byte_pattern(1000);
  auto exact = data(http_request(
      "POST", "/orders/exact",
      {"X-ApiKey: " + cap_key, "Content-Type: text/plain"}, exact_body));
  ASSERT_TRUE(exact && exact->status == 200) << show(exact);
  const std::string big_body = byte_pattern(5000);
  auto big = data(http_request(
      "POST", "/orders/big",
      {"X-ApiKey: " + cap_key, "Content-Type: text/plain"}, big_body));
  ASSERT_TRUE(big && big->status == 200) << show(big);
  // Proxied: a large upstream response is cut; a small echo is captured both
  // ways.
  auto bytes =
      data(http_request("GET", "/bytes/5000", {"X-ApiKey: " + cap_key}));
  ASSERT_TRUE(bytes && bytes->status == 200) << show(bytes);
  const std::string echo_body = "small echo body";
  auto echo = data(http_request(
      "POST", "/echo", {"X-ApiKey: " + cap_key, "Content-Type: text/plain"},
      echo_body));
  ASSERT_TRUE(echo && echo->status == 200) << show(echo);
  // Keys without the flags: no captures.
  auto nocap = data(http_request(
      "POST", "/orders/nocap",
      {"X-ApiKey: " + plain_key, "Content-Type: text/plain"}, "body"));
  ASSERT_TRUE(nocap && nocap->status == 200) << show(nocap);
  auto nocap_proxy =
      data(http_request("GET", "/bytes/10", {"X-ApiKey: " + plain_key}));
  ASSERT_TRUE(nocap_proxy && nocap_proxy->status == 200) << show(nocap_proxy);

  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  const LogContents log = read_log(server_->log_dir());
  ASSERT_EQ(log.records().size(), 9u);
  EXPECT_TRUE(log.bad_lines.empty());
  EXPECT_TRUE(log.unterminated.empty());

  const Json *r = record_for(log, "/orders/small");
  ASSERT_NE(r, nullptr);
  {
    std::string head = head_of(small_req);
    head.replace(head.find(cap_key), cap_key.size(), marker);
    EXPECT_EQ(captured(*r, "request", "head"), head);
    EXPECT_EQ(captured(*r, "request", "body"), small_body);
    EXPECT_EQ(truncated_flag(*r, "request"), 0);
    EXPECT_EQ(captured(*r, "response", "head"), head_of(small->raw));
    EXPECT_EQ(captured(*r, "response", "body"), small->body);
    EXPECT_EQ(truncated_flag(*r, "response"), 0);
    EXPECT_EQ(r->str("key_id"), cap.id);
  }
  r = record_for(log, "/orders/exact");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(captured(*r, "request", "body"), exact_body);
  EXPECT_EQ(truncated_flag(*r, "request"), 0) << "1000 bytes fit 1000";

  r = record_for(log, "/orders/big");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(captured(*r, "request", "body"), big_body.substr(0, 1000));
  EXPECT_EQ(truncated_flag(*r, "request"), 1);
  EXPECT_GE(r->num("bytes_in"), 5000);

  r = record_for(log, "/bytes/5000");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->str("api"), "proxied");
  EXPECT_TRUE(captured(*r, "response", "head").starts_with("HTTP/1.1 200 "))
      << captured(*r, "response", "head");
  EXPECT_TRUE(captured(*r, "response", "head").ends_with("\r\n\r\n"));
  EXPECT_EQ(captured(*r, "response", "body"), byte_pattern(1000));
  EXPECT_EQ(truncated_flag(*r, "response"), 1);
  EXPECT_EQ(r->num("bytes_out"), static_cast<int64_t>(bytes->raw.size()));

  r = record_for(log, "/echo");
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(captured(*r, "request", "body"), echo_body);
  EXPECT_EQ(captured(*r, "response", "body"), echo_body)
      << "the echoed body, de-chunked";
  EXPECT_EQ(truncated_flag(*r, "request"), 0);
  EXPECT_EQ(truncated_flag(*r, "response"), 0);
  EXPECT_TRUE(
      captured(*r, "request", "head").starts_with("POST /echo HTTP/1.1\r\n"));

  for (std::string_view path : {"/orders/nocap", "/bytes/10"}) {
    r = record_for(log, path);
    ASSERT_NE(r, nullptr) << path;
    EXPECT_EQ(r->str("key_id"), plain.id);
    EXPECT_FALSE(r->has("request")) << path;
    EXPECT_FALSE(r->has("response")) << path;
  }
}

// A worker writes a record straight into its ring when the ring has room for the record's worst
// case (6 bytes per captured byte); with a 64 KiB ring and ~16 KB of captures it never has, so
// every captured record takes the other path (formatted aside, then copied in) while the small
// ones still go in place. Both kinds must all arrive, whole and in order.
TEST_F(AccessLogTest, RecordsTooLargeToWriteInPlaceAreCopiedInWhole) {
  ASSERT_NO_FATAL_FAILURE(
      start(1, "ring_bytes_per_worker = 65536\ncapture_bytes_max = 8000"));
  const std::string cap_key = "alog-ring-" + random_hex(24);
  const CreatedKey cap = create_key(kBootstrapAdminKey, json_key(cap_key),
                                    {"orders", "proxied"}, true, true);
  ASSERT_FALSE(cap.id.empty());
  constexpr int kRequests = 12;
  for (int i = 0; i < kRequests; ++i) {
    // Alternately a large captured echo (copied in) and a small one (in place).
    const std::string body =
        i % 2 == 0 ? byte_pattern(7000 + static_cast<size_t>(i)) : "small " + std::to_string(i);
    auto r = data(http_request("POST", "/echo?n=" + std::to_string(i),
                               {"X-ApiKey: " + cap_key, "Content-Type: text/plain"}, body));
    ASSERT_TRUE(r && r->status == 200) << i << " " << show(r);
  }
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  const LogContents log = read_log(server_->log_dir());
  EXPECT_TRUE(log.bad_lines.empty());
  EXPECT_TRUE(log.unterminated.empty());
  EXPECT_EQ(log.markers(), 0u) << "records were dropped";
  ASSERT_EQ(log.records().size(), static_cast<size_t>(kRequests + 1));  // + the key's creation
  for (int i = 0; i < kRequests; ++i) {
    const std::string path = "/echo?n=" + std::to_string(i);
    const Json *r = nullptr;
    for (const Json *candidate : log.records()) {
      if (candidate->str("path") == path) r = candidate;
    }
    ASSERT_NE(r, nullptr) << path;
    const std::string body =
        i % 2 == 0 ? byte_pattern(7000 + static_cast<size_t>(i)) : "small " + std::to_string(i);
    EXPECT_EQ(captured(*r, "request", "body"), body) << path;
    EXPECT_EQ(captured(*r, "response", "body"), body) << path;
    EXPECT_EQ(truncated_flag(*r, "request"), 0) << path;
  }
}

// A capture limit the buffer cannot hold in the worst case (64 KiB of request and response
// body, each byte escaping to up to 6, in a 64 KiB buffer): the bodies are cut to fit and marked
// truncated, so the request is still logged instead of dropped as too long.
TEST_F(AccessLogTest, CapturesLargerThanTheBufferAreCutToFitNotDropped) {
  ASSERT_NO_FATAL_FAILURE(
      start(1, "ring_bytes_per_worker = 65536\ncapture_bytes_max = 65536"));
  const std::string cap_key = "alog-fit-" + random_hex(24);
  const CreatedKey cap = create_key(kBootstrapAdminKey, json_key(cap_key),
                                    {"orders", "proxied"}, true, true);
  ASSERT_FALSE(cap.id.empty());
  const std::string body = byte_pattern(60000);
  auto r = data(http_request("POST", "/echo?n=fit",
                             {"X-ApiKey: " + cap_key, "Content-Type: application/octet-stream"},
                             body));
  ASSERT_TRUE(r && r->status == 200) << show(r);
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  const LogContents log = read_log(server_->log_dir());
  EXPECT_TRUE(log.bad_lines.empty());
  EXPECT_EQ(log.markers(), 0u) << "the record was dropped";
  const Json *rec = nullptr;
  for (const Json *candidate : log.records()) {
    if (candidate->str("path") == "/echo?n=fit") rec = candidate;
  }
  ASSERT_NE(rec, nullptr) << "the request was not logged";
  EXPECT_EQ(rec->num("status"), 200);
  for (const char *message : {"request", "response"}) {
    const std::string captured_body = captured(*rec, message, "body");
    EXPECT_EQ(truncated_flag(*rec, message), 1) << message;
    EXPECT_GT(captured_body.size(), 1000u) << message;
    EXPECT_LT(captured_body.size(), body.size()) << message;
    EXPECT_EQ(captured_body, body.substr(0, captured_body.size())) << message;
  }
}

// --- 3. Redaction
// ------------------------------------------------------------------------------

TEST_F(AccessLogTest, NoKeyReachesAnyLogFileInAnyEncoding) {
  ASSERT_NO_FATAL_FAILURE(start(2, "capture_bytes_max = 1000"));
  // An admin key that logs its requests and responses, created by the bootstrap
  // key.
  const std::string admin_key = "alog-admin-" + random_hex(24);
  const CreatedKey adm = create_key(kBootstrapAdminKey, json_key(admin_key),
                                    {"admin"}, true, true);
  ASSERT_FALSE(adm.id.empty());
  // Through it: a plain key, a key full of characters that need escaping (sent
  // JSON-escaped,
  // "\/" included), a generated key, then that one rotated.
  const std::string key_a = "alogA" + random_hex(27);
  const std::string key_s =
      "s" + random_hex(10) + "\"/\\&=+%?#;'{}<>~:," + random_hex(10);
  const CreatedKey a =
      create_key(admin_key, json_key(key_a), {"orders", "proxied"}, true, true);
  // Its description quotes the admin key itself: only the by-value rule can
  // catch that one (in the request and in the response that shows the
  // description).
  const CreatedKey s =
      create_key(admin_key, json_key(key_s), {"orders", "proxied"}, true, true,
                 "pasted by mistake: " + admin_key);
  const CreatedKey g = create_key(admin_key, "", {"orders"}, true, true);
  ASSERT_FALSE(a.id.empty());
  ASSERT_FALSE(s.id.empty());
  ASSERT_FALSE(g.id.empty());
  ASSERT_EQ(a.value, key_a);
  ASSERT_FALSE(g.value.empty())
      << "the create response shows the generated key";
  auto rotated = admin("POST", "/admin/keys/" + g.id + "/rotate", admin_key,
                       "{\"grace_seconds\":60}");
  ASSERT_TRUE(rotated && rotated->status == 201) << show(rotated);
  const std::string key_r = string_member(rotated->body, "key");
  ASSERT_FALSE(key_r.empty());
  ASSERT_NE(key_r, g.value);

  const std::string ma = "[redacted:" + a.id + "]";
  const std::string ms = "[redacted:" + s.id + "]";
  const std::string mg = "[redacted:" + g.id + "]";
  const std::string madm = "[redacted:" + adm.id + "]";
  const std::string hdr_a = "X-ApiKey: " + key_a;
  const std::string json_t = "Content-Type: application/json";
  const std::string text_t = "Content-Type: text/plain";
  const std::string form_t = "Content-Type: application/x-www-form-urlencoded";

  // What each data request must look like in its record: the expected "path",
  // captured request body (exact, unless `body_has` is used), and markers that
  // must appear in the head.
  struct Case {
    Case(std::string path_, std::string request_, std::string expect_path_,
         std::string expect_body_, std::string head_marker_ = {},
         size_t head_markers_ = 0, bool truncated_ = false,
         std::string response_marker_ = {})
        : path(std::move(path_)), request(std::move(request_)),
          expect_path(std::move(expect_path_)),
          expect_body(std::move(expect_body_)),
          head_marker(std::move(head_marker_)), head_markers(head_markers_),
          truncated(truncated_), response_marker(std::move(response_marker_)) {}
    std::string path; // the tag: the record's path up to '?'
    std::string request;
    std::string expect_path; // "" = path == tag
    std::string expect_body; // exact captured request body; "-" = not checked
    std::string
        head_marker; // must occur in the captured head head_markers times
    size_t head_markers;
    bool truncated; // the captured request body is cut
    std::string
        response_marker; // must occur (twice) in the captured response body
  };
  std::vector<Case> cases;
  auto add = [&](Case c) { cases.push_back(std::move(c)); };
  const std::string pct_a = percent_encoded(key_a, false);
  const std::string pctu_a = percent_encoded(key_a, true);

  add({"/orders/hdr", http_request("GET", "/orders/hdr", {hdr_a}), "", "", ma,
       1});
  add({"/orders/hdr2", http_request("GET", "/orders/hdr2", {hdr_a, hdr_a}), "",
       "", ma, 2});
  add({"/orders/q-raw",
       http_request("GET", "/orders/q-raw?a=1&key=" + key_a + "&b=2"),
       "/orders/q-raw?a=1&key=" + ma + "&b=2", "", ma, 1});
  add({"/orders/q-name", http_request("GET", "/orders/q-name?k%65y=" + key_a),
       "/orders/q-name?k%65y=" + ma, "", ma, 1});
  add({"/orders/q-pct", http_request("GET", "/orders/q-pct?key=" + pct_a),
       "/orders/q-pct?key=" + ma, "", ma, 1});
  add({"/orders/q-pctu", http_request("GET", "/orders/q-pctu?key=" + pctu_a),
       "/orders/q-pctu?key=" + ma, "", ma, 1});
  add({"/orders/form",
       http_request("POST", "/orders/form", {form_t},
                    "x=1&key=" + key_a + "&y=2"),
       "", "x=1&key=" + ma + "&y=2"});
  add({"/orders/form-pct",
       http_request("POST", "/orders/form-pct", {form_t + "; charset=UTF-8"},
                    "k%65y=" + pctu_a),
       "", "k%65y=" + ma});
  add({"/orders/json",
       http_request("POST", "/orders/json", {json_t},
                    "{\"a\":1,\"API_Key\":\"" + key_a + "\"}"),
       "", "{\"a\":1,\"API_Key\":\"" + ma + "\"}"});
  add({"/orders/json-name",
       http_request("POST", "/orders/json-name", {json_t},
                    "{\"API\\u005fKey\":\"" + key_a + "\"}"),
       "", "{\"API\\u005fKey\":\"" + ma + "\"}"});
  add({"/orders/json-value",
       http_request("POST", "/orders/json-value", {json_t},
                    "{\"API_Key\":\"" + unicode_escaped(key_a, false) + "\"}"),
       "", "{\"API_Key\":\"" + ma + "\"}"});
  add({"/orders/json-dup",
       http_request("POST", "/orders/json-dup", {hdr_a, json_t},
                    "{\"API_Key\":\"" + key_a + "\",\"API_Key\":\"" + key_a +
                        "\"}"),
       "", "{\"API_Key\":\"" + ma + "\",\"API_Key\":\"" + ma + "\"}", ma, 1});
  add({"/orders/json-open",
       http_request("POST", "/orders/json-open", {hdr_a, json_t},
                    "{\"API_Key\":\"" + key_a + "\", \"x\":"),
       "", "{\"API_Key\":\"" + ma + "\", \"x\":", ma, 1});
  add({"/orders/json-cut",
       http_request("POST", "/orders/json-cut", {hdr_a, json_t},
                    "{\"note\":[1,2,{\"API_Key\":\"" + key_a),
       "", "{\"note\":[1,2,{\"API_Key\":\"" + ma, ma, 1});
  add({"/orders/json-text",
       http_request("POST", "/orders/json-text", {hdr_a, text_t},
                    "{\"deep\":{\"API_Key\":\"" + key_a + "\"}}"),
       "", "{\"deep\":{\"API_Key\":\"" + ma + "\"}}", ma, 1});
  add({"/orders/plain",
       http_request("POST", "/orders/plain", {hdr_a, text_t},
                    "the key is " + key_a + ", again: " + key_a + "."),
       "", "the key is " + ma + ", again: " + ma + ".", ma, 1});
  add({"/orders/plain-pct",
       http_request("POST", "/orders/plain-pct", {hdr_a, text_t},
                    "pct " + pct_a + " mixed " + key_a.substr(0, 7) +
                        pctu_a.substr(21) + " end"),
       "", "pct " + ma + " mixed " + ma + " end", ma, 1});
  // Cut by capture_bytes_max (1000) in the middle of the key: the captured half
  // goes too.
  {
    const std::string open = "{\"pad\":\"";
    const std::string member = "\",\"API_Key\":\"";
    const std::string before =
        open + std::string(1000 - 16 - open.size() - member.size(), 'p') +
        member;
    ASSERT_EQ(before.size(), 1000u - 16);
    add({"/orders/trunc-json",
         http_request("POST", "/orders/trunc-json", {json_t},
                      before + key_a + "\"}"),
         "", before + ma, "", 0, true});
    const std::string form_before =
        "pad=" + std::string(1000 - 16 - 4 - 5, 'p') + "&key=";
    ASSERT_EQ(form_before.size(), 1000u - 16);
    add({"/orders/trunc-form",
         http_request("POST", "/orders/trunc-form", {form_t},
                      form_before + key_a + "&z=1"),
         "", form_before + ma, "", 0, true});
  }
  // Proxied: the upstream echoes the body back, so the key is in the response
  // body too.
  add({"/echo",
       http_request("POST", "/echo", {hdr_a, json_t},
                    "{\"API_Key\":\"" + key_a + "\",\"msg\":\"" + key_a +
                        "\"}"),
       "", "{\"API_Key\":\"" + ma + "\",\"msg\":\"" + ma + "\"}", ma, 1, false,
       ma});
  // The key that needs escaping, every way.
  add({"/orders/s-hdr",
       http_request("GET", "/orders/s-hdr", {"X-ApiKey: " + key_s}), "", "", ms,
       1});
  add({"/orders/s-q",
       http_request("GET", "/orders/s-q?key=" + percent_encoded(key_s, true)),
       "/orders/s-q?key=" + ms, "", ms, 1});
  add({"/orders/s-form",
       http_request("POST", "/orders/s-form", {form_t},
                    "key=" + form_encoded(key_s)),
       "", "key=" + ms});
  add({"/orders/s-json",
       http_request("POST", "/orders/s-json", {json_t},
                    "{\"API_Key\":\"" + json_escaped(key_s, true) + "\"}"),
       "", "{\"API_Key\":\"" + ms + "\"}"});
  add({"/orders/s-json-plain",
       http_request("POST", "/orders/s-json-plain", {json_t},
                    "{\"API_Key\":\"" + json_escaped(key_s) + "\"}"),
       "", "{\"API_Key\":\"" + ms + "\"}"});
  add({"/orders/s-text",
       http_request("POST", "/orders/s-text", {"X-ApiKey: " + key_s, text_t},
                    "raw " + key_s + " json " + json_escaped(key_s) + " end"),
       "", "raw " + ms + " json " + ms + " end", ms, 1});
  // The generated key (its grace period still running) and its rotated value.
  add({"/orders/gen",
       http_request("GET", "/orders/gen", {"X-ApiKey: " + g.value}), "", "", mg,
       1});
  add({"/orders/rot",
       http_request("GET", "/orders/rot", {"X-ApiKey: " + key_r}), "", "", mg,
       1});

  for (const Case &c : cases) {
    auto r = data(c.request);
    ASSERT_TRUE(r.has_value()) << c.path;
    EXPECT_EQ(r->status, 200) << c.path << "\n" << r->raw;
  }
  ASSERT_TRUE(server_->stop(SIGTERM).clean());

  // Every byte of every file under the log dir: no key in any form.
  size_t files = 0;
  const std::string bytes = all_bytes_under(server_->log_dir(), &files);
  ASSERT_GT(files, 0u);
  const std::vector<std::pair<std::string, std::string>> keys = {
      {"bootstrap admin key", std::string(kBootstrapAdminKey)},
      {"capturing admin key", admin_key},
      {"key A", key_a},
      {"key S (needs escaping)", key_s},
      {"generated key", g.value},
      {"rotated key", key_r},
  };
  for (const auto &[what, key] : keys) {
    for (const std::string &form : forbidden_forms(key)) {
      EXPECT_EQ(count_of(bytes, form), 0u)
          << what << " found in the log as '" << form << "'";
    }
  }
  // The half of key A that the capture limit let through in /orders/trunc-*,
  // counted apart from whole-key occurrences (reported above).
  const std::string half = key_a.substr(0, 16);
  for (size_t f = 0; f < 2; ++f) {
    const std::string whole = f == 0 ? key_a : percent_encoded(key_a, false);
    const std::string part = f == 0 ? half : percent_encoded(half, false);
    EXPECT_EQ(count_of(bytes, part), count_of(bytes, whole))
        << "the truncated half of key A found in the log as '" << part << "'";
  }

  // Markers where the keys were.
  const LogContents log = read_log(server_->log_dir());
  EXPECT_TRUE(log.bad_lines.empty());
  for (const Case &c : cases) {
    SCOPED_TRACE(c.path);
    const Json *r = record_for(log, c.path);
    ASSERT_NE(r, nullptr) << "no single record";
    EXPECT_EQ(r->num("status"), 200);
    EXPECT_EQ(r->str("path"), c.expect_path.empty() ? c.path : c.expect_path);
    ASSERT_TRUE(r->has("request")) << "not captured";
    ASSERT_TRUE(r->has("response")) << "not captured";
    if (c.expect_body != "-") {
      EXPECT_EQ(captured(*r, "request", "body"), c.expect_body);
    }
    EXPECT_EQ(truncated_flag(*r, "request"), c.truncated ? 1 : 0);
    if (!c.head_marker.empty()) {
      EXPECT_EQ(count_of(captured(*r, "request", "head"), c.head_marker),
                c.head_markers)
          << captured(*r, "request", "head");
    }
    if (!c.response_marker.empty()) {
      EXPECT_GE(count_of(captured(*r, "response", "body"), c.response_marker),
                2u)
          << captured(*r, "response", "body");
    }
  }
  // Admin records of the capturing admin key: its header and every `key` member
  // redacted.
  size_t admin_records = 0;
  for (const Json *r : log.records()) {
    if (r->str("listener") != "admin" || r->str("key_id") != adm.id)
      continue;
    ++admin_records;
    SCOPED_TRACE(r->str("method") + " " + r->str("path"));
    EXPECT_EQ(count_of(captured(*r, "request", "head"), "X-ApiKey: " + madm),
              1u)
        << captured(*r, "request", "head");
    const std::string req_body = captured(*r, "request", "body");
    const std::string resp_body = captured(*r, "response", "body");
    EXPECT_NE(resp_body.find("\"key\":\"[redacted]\""), std::string::npos)
        << resp_body;
    if (r->str("path") == "/admin/keys" &&
        resp_body.find(g.id) == std::string::npos) {
      EXPECT_NE(req_body.find("\"key\":\"[redacted]\""), std::string::npos)
          << req_body;
    }
  }
  EXPECT_EQ(admin_records, 4u) << "3 creates and a rotate";
}

// The path rule by value holds for every record, not only for keys that capture: a key (or an
// unknown value) that also appears in a path segment or another query parameter is scrubbed
// from the record's "path" as well.
TEST_F(AccessLogTest, KeysWithoutCaptureAndUnknownKeysAreScrubbedFromThePath) {
  ASSERT_NO_FATAL_FAILURE(start(1, ""));
  const std::string key = "alogP" + random_hex(27);
  const CreatedKey k =
      create_key(kBootstrapAdminKey, json_key(key), {"orders"}, false, false);
  ASSERT_FALSE(k.id.empty());
  const std::string unknown = "alogU" + random_hex(27);
  struct Sent {
    std::string target;
    std::string header_key; // "" = no X-ApiKey (the query's key= carries it)
    int status;
    std::string expect_path;
  };
  const std::string mk = "[redacted:" + k.id + "]";
  const std::vector<Sent> sent = {
      {"/orders/" + key, key, 200, "/orders/" + mk},
      {"/orders/t?token=" + key, key, 200, "/orders/t?token=" + mk},
      {"/orders/p?ref=" + percent_encoded(key, true), key, 200, "/orders/p?ref=" + mk},
      {"/orders/q?key=" + key + "&x=" + percent_encoded(key, false), "", 200,
       "/orders/q?key=" + mk + "&x=" + mk},
      {"/orders/" + unknown, unknown, 401, "/orders/[redacted]"},
      {"/orders/u?token=" + unknown, unknown, 401, "/orders/u?token=[redacted]"},
  };
  for (const Sent &c : sent) {
    std::vector<std::string> headers;
    if (!c.header_key.empty())
      headers.push_back("X-ApiKey: " + c.header_key);
    auto r = data(http_request("GET", c.target, headers, ""));
    ASSERT_TRUE(r.has_value()) << c.target;
    EXPECT_EQ(r->status, c.status) << c.target;
  }
  // The bootstrap admin key (no capture) named in an admin path.
  auto r = admin("GET", "/admin/keys/" + std::string(kBootstrapAdminKey), kBootstrapAdminKey);
  ASSERT_TRUE(r.has_value());

  const LogContents log = wait_for_records(server_->log_dir(), sent.size() + 2);
  for (const Sent &c : sent) {
    EXPECT_TRUE(has_record_with_path(log, c.expect_path))
        << "no record with path " << c.expect_path;
  }
  expect_no_form_of(server_->log_dir(), {key, unknown, kBootstrapAdminKey});
}

// A JSON body that stops parsing after its API_Key member is refused (400 invalid_body) before
// any lookup, but it carried that key: a copy elsewhere in the request (the target here) is
// scrubbed from its record like any presented key's.
TEST_F(AccessLogTest, TheKeyOfAJsonBodyThatStopsParsingIsScrubbedFromThePath) {
  ASSERT_NO_FATAL_FAILURE(start(1, ""));
  const std::string key = "alogJ" + random_hex(27);
  const CreatedKey k = create_key(kBootstrapAdminKey, json_key(key), {"orders"}, false, false);
  ASSERT_FALSE(k.id.empty());
  auto r = round_trip(server_->data_port(),
                      http_request("POST", "/orders/j?token=" + key,
                                   {"Content-Type: application/json"},
                                   "{\"API_Key\":\"" + key + "\",\"n\":}"));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("invalid_body"), std::string::npos) << r->body;
  const LogContents log = wait_for_records(server_->log_dir(), 2);
  EXPECT_TRUE(has_record_with_path(log, "/orders/j?token=[redacted]"));
  expect_no_form_of(server_->log_dir(), {key});
}

// Requests answered before their key is looked up (/healthz, 400 invalid_path, 404 no_route,
// 400 invalid_auth_request, the admin port's 404s and console), or refused for an ambiguous or
// malformed pair of keys, still carry a key: a copy of it elsewhere in the target is scrubbed
// from their records too, on both ports (with a body, a forwarding keygate refuses a path at
// its head).
TEST_F(AccessLogTest, KeysOfRequestsRefusedBeforeTheLookupAreScrubbedFromThePath) {
  ASSERT_NO_FATAL_FAILURE(start(1, ""));
  const std::string key = "alogE" + random_hex(27);
  const CreatedKey k = create_key(kBootstrapAdminKey, json_key(key), {"orders"}, false, false);
  ASSERT_FALSE(k.id.empty());
  const std::string admin_key(kBootstrapAdminKey);
  struct Sent {
    bool admin_port;
    std::string method;
    std::string target; // "@" stands for the key
    int status;
    std::string expect_path = {}; // empty: the target, "[redacted]" for "@"
  };
  const std::vector<Sent> sent = {
      {false, "GET", "/nowhere?token=@", 404},
      {false, "POST", "/nowhere/posted?token=@", 404},
      {false, "GET", "/orders/../x?token=@", 400},
      {false, "GET", "/healthz?token=@", 200},
      {false, "POST", "/healthz?posted&token=@", 405},
      {false, "GET", "/_keygate/auth?token=@", 400},
      {false, "GET", "/orders/a?key=other&token=@", 401,
       "/orders/a?key=[redacted]&token=[redacted]"},
      {false, "GET", "/orders/b?key=%ZZ&token=@", 401,
       "/orders/b?key=[redacted]&token=[redacted]"},
      {true, "GET", "/admin/nowhere?token=@", 404},
      {true, "GET", "/console/nowhere?token=@", 404},
      {true, "GET", "/healthz?token=@", 200},
      {true, "GET", "/admin/keys?key=other&token=@", 401,
       "/admin/keys?key=[redacted]&token=[redacted]"},
  };
  const auto with = [](std::string s, std::string_view value) {
    const size_t at = s.find('@');
    return s.replace(at, 1, value);
  };
  for (const Sent &c : sent) {
    const std::string &value = c.admin_port ? admin_key : key;
    const std::string target = with(c.target, value);
    const std::vector<std::string> headers = {"X-ApiKey: " + value, "Content-Type: text/plain"};
    const std::string body = c.method == "POST" ? "some body" : "";
    auto r = round_trip(c.admin_port ? server_->admin_port() : server_->data_port(),
                        http_request(c.method, target, headers, body));
    ASSERT_TRUE(r.has_value()) << target;
    EXPECT_EQ(r->status, c.status) << target;
  }

  const LogContents log = wait_for_records(server_->log_dir(), sent.size() + 1);
  for (const Sent &c : sent) {
    const std::string expect =
        c.expect_path.empty() ? with(c.target, "[redacted]") : c.expect_path;
    EXPECT_TRUE(has_record_with_path(log, expect)) << "no record with path " << expect;
  }
  expect_no_form_of(server_->log_dir(), {key, kBootstrapAdminKey});
}

// Requests the HTTP layer refuses once their head is complete (no handler sees them) still
// carry their key: a copy of it in the target is scrubbed from their records too.
TEST_F(AccessLogTest, KeysOfRequestsTheHttpLayerRefusesAfterTheHeadAreScrubbedFromThePath) {
  ASSERT_NO_FATAL_FAILURE(start(1, ""));
  const std::string key = "alogH" + random_hex(27);
  const CreatedKey k = create_key(kBootstrapAdminKey, json_key(key), {"orders"}, false, false);
  ASSERT_FALSE(k.id.empty());
  const std::string admin_key(kBootstrapAdminKey);
  struct Sent {
    bool admin_port;
    std::string path;   // the target is path + "?token=<key>"
    std::string extra;  // header lines after X-ApiKey (each ending in CRLF)
    int status;
  };
  const std::vector<Sent> sent = {
      {false, "/orders/no-host", "", 400},
      {false, "/orders/upgrade", "Host: it\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n", 400},
      {false, "/orders/expect", "Host: it\r\nExpect: teapot\r\n", 417},
      {false, "/orders/coding", "Host: it\r\nTransfer-Encoding: gzip, chunked\r\n", 501},
      {true, "/admin/keys", "", 400},
  };
  for (const Sent &c : sent) {
    const std::string &value = c.admin_port ? admin_key : key;
    const std::string request = "GET " + c.path + "?token=" + value + " HTTP/1.1\r\nX-ApiKey: " +
                                value + "\r\n" + c.extra + "\r\n";
    auto r = round_trip(c.admin_port ? server_->admin_port() : server_->data_port(), request);
    ASSERT_TRUE(r.has_value()) << c.path;
    EXPECT_EQ(r->status, c.status) << c.path;
  }

  const LogContents log = wait_for_records(server_->log_dir(), sent.size() + 1);
  for (const Sent &c : sent) {
    const std::string expect = c.path + "?token=[redacted]";
    EXPECT_TRUE(has_record_with_path(log, expect)) << "no record with path " << expect;
  }
  expect_no_form_of(server_->log_dir(), {key, kBootstrapAdminKey});
}

// --- 4. Sequence without drops
// -----------------------------------------------------------------

TEST_F(AccessLogTest, SequentialRequestsGiveOneRecordEachWithConsecutiveSeqs) {
  ASSERT_NO_FATAL_FAILURE(start(2, ""));
  const std::string key = "alog-seq-" + random_hex(24);
  const CreatedKey k =
      create_key(kBootstrapAdminKey, json_key(key), {"orders"}, false, false);
  ASSERT_FALSE(k.id.empty());
  constexpr int kRequests = 300;
  constexpr int kConnections =
      4; // several connections, so both workers take part
  RawClient clients[kConnections];
  for (RawClient &c : clients)
    ASSERT_TRUE(c.connect(server_->data_port()));
  for (int i = 0; i < kRequests; ++i) {
    RawClient &c = clients[i % kConnections];
    ASSERT_TRUE(c.send(http_request("GET", "/orders/n-" + std::to_string(i),
                                    {"X-ApiKey: " + key})));
    auto r = c.read_response();
    ASSERT_TRUE(r && r->status == 200) << i << " " << show(r);
  }
  const LogContents polled =
      wait_for_records(server_->log_dir(), kRequests + 1);
  EXPECT_EQ(polled.records().size(), static_cast<size_t>(kRequests + 1));
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  const LogContents log = read_log(server_->log_dir());
  EXPECT_TRUE(log.bad_lines.empty());
  EXPECT_TRUE(log.unterminated.empty());
  EXPECT_EQ(log.markers(), 0u) << "records were dropped";
  ASSERT_EQ(log.lines.size(), static_cast<size_t>(kRequests + 1));
  std::vector<int64_t> seqs;
  std::map<int64_t, std::vector<int>>
      per_worker; // request index in seq order, per worker
  std::vector<int> seen(kRequests, 0);
  for (const LogLine &l : log.lines)
    seqs.push_back(l.json.num("seq"));
  for (size_t i = 1; i < seqs.size(); ++i) {
    EXPECT_EQ(seqs[i], seqs[i - 1] + 1) << "line " << i;
  }
  std::vector<const Json *> by_seq = log.records();
  std::sort(by_seq.begin(), by_seq.end(), [](const Json *x, const Json *y) {
    return x->num("seq") < y->num("seq");
  });
  for (const Json *r : by_seq) {
    const std::string path = r->str("path");
    if (!path.starts_with("/orders/n-"))
      continue;
    const int i = std::stoi(path.substr(10));
    ASSERT_TRUE(i >= 0 && i < kRequests);
    ++seen[static_cast<size_t>(i)];
    EXPECT_EQ(r->str("key_id"), k.id);
    per_worker[r->num("worker")].push_back(i);
  }
  for (int i = 0; i < kRequests; ++i)
    EXPECT_EQ(seen[static_cast<size_t>(i)], 1) << "request " << i;
  for (const auto &[worker, order] : per_worker) {
    EXPECT_TRUE(std::is_sorted(order.begin(), order.end()))
        << "worker " << worker << "'s records are out of request order";
  }
}

// --- 5. Restart after kill -9 with a torn tail
// -------------------------------------------------

TEST_F(AccessLogTest, RestartAfterKillSkipsTornTailAndContinuesSeq) {
  dirs_ = std::make_unique<TempDir>();
  const std::string data_dir = dirs_->path() + "/data";
  const std::string log_dir = dirs_->path() + "/logs";
  ASSERT_NO_FATAL_FAILURE(start(2, "", data_dir, log_dir));
  const std::string key = "alog-restart-" + random_hex(24);
  const CreatedKey k =
      create_key(kBootstrapAdminKey, json_key(key), {"orders"}, false, false);
  ASSERT_FALSE(k.id.empty());
  for (int i = 0; i < 3; ++i) {
    auto r = data(http_request("GET", "/orders/before-" + std::to_string(i),
                               {"X-ApiKey: " + key}));
    ASSERT_TRUE(r && r->status == 200) << show(r);
  }
  const LogContents before = wait_for_records(log_dir, 4);
  ASSERT_EQ(before.records().size(), 4u);
  ASSERT_TRUE(before.unterminated.empty());
  const ExitStatus killed = server_->stop(SIGKILL);
  EXPECT_EQ(killed.signal, SIGKILL) << killed.describe();
  const int64_t last_seq = before.lines.back().json.num("seq");
  ASSERT_GE(last_seq, 0);

  // A record torn in the middle of its write.
  const std::vector<std::string> segments = segment_files(log_dir);
  ASSERT_FALSE(segments.empty());
  const std::string torn =
      "{\"seq\":" + std::to_string(last_seq + 1) +
      ",\"time_us\":1,\"request_id\":7,\"worker\":0,\"listener\":\"data\","
      "\"client\":\"127.0.0.1:1\",\"key_id\":null,\"user\":null,\"api\":null,"
      "\"method\":\"GET\",\"path\":\"/orders/torn-frag";
  {
    std::ofstream f(segments.back(), std::ios::binary | std::ios::app);
    f << torn;
  }

  server_.reset();
  ASSERT_NO_FATAL_FAILURE(start(2, "", data_dir, log_dir));
  auto r = data(http_request("GET", "/orders/after", {"X-ApiKey: " + key}));
  ASSERT_TRUE(r && r->status == 200) << show(r);
  const LogContents polled = wait_for_records(log_dir, 5);
  EXPECT_EQ(polled.records().size(), 5u);
  ASSERT_TRUE(server_->stop(SIGTERM).clean());

  const LogContents after = read_log(log_dir);
  EXPECT_TRUE(after.bad_lines.empty())
      << "a torn fragment joined a line: " << after.bad_lines.front();
  EXPECT_TRUE(after.unterminated.empty());
  ASSERT_EQ(after.lines.size(), before.lines.size() + 1);
  for (size_t i = 0; i < before.lines.size(); ++i) {
    EXPECT_EQ(after.lines[i].text, before.lines[i].text)
        << "earlier record " << i << " changed";
  }
  const Json &next = after.lines.back().json;
  EXPECT_EQ(next.str("path"), "/orders/after");
  EXPECT_EQ(next.num("seq"), last_seq + 1)
      << "the log does not continue with the next seq";
  EXPECT_EQ(next.str("key_id"), k.id);
  size_t files = 0;
  const std::string bytes = all_bytes_under(log_dir, &files);
  EXPECT_EQ(count_of(bytes, "torn-frag"), 0u)
      << "the torn fragment is still in the log";
}

// --- 5b. Directories, limits and files keygate cannot use
// --------------------------------------

// A log directory keygate cannot create files in (the reviewer: `chmod 555 logs`, keygate run as
// another user) was accepted: keygate started, said nothing, and lost the whole log. Now it
// does not start. Root passes file permissions (CAP_DAC_OVERRIDE), and CI runs the tests as
// root: keygate then runs under setpriv without that capability, as a plain user would.
TEST(AccessLogStartup, ALogDirectoryKeygateCannotWriteStopsTheStartWithOneClearLine) {
  TempDir dirs;
  const std::string log_dir = dirs.path() + "/logs";
  ASSERT_EQ(::mkdir(log_dir.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(log_dir.c_str(), 0555), 0);
  std::string program = keygate_binary();
  std::vector<std::string> args;
  if (::geteuid() == 0) {
    program = "/usr/bin/setpriv";
    args = {"--bounding-set=-dac_override,-dac_read_search", "--", keygate_binary()};
  }
  args.insert(args.end(), {"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
                           "--workers", "1", "--data-dir", dirs.path() + "/data", "--log-dir",
                           log_dir});
  const ProcessResult run = run_process(program, args);
  if (run.err.starts_with("setpriv:")) GTEST_SKIP() << "setpriv cannot drop capabilities: " << run.err;
  EXPECT_TRUE(run.status.exited && run.status.code == 1) << run.status.describe() << "\n" << run.err;
  EXPECT_EQ(count_of(run.err, "keygate: access log: cannot create files in " + log_dir +
                                  ": Permission denied\n"),
            1u)
      << run.err;
  EXPECT_EQ(count_of(run.err, "access log: access log:"), 0u) << run.err;
  EXPECT_EQ(run.out.find("keygate: listening"), std::string::npos) << run.out;
  ::chmod(log_dir.c_str(), 0755);
}

// A newest segment keygate cannot continue — a FIFO (the writer would block on it for good) or
// a directory — stops the start with one line, said once ("access log: access log: ..." it was).
TEST(AccessLogStartup, ANewestSegmentThatIsNoFileStopsTheStartWithOneClearLine) {
  for (const bool fifo : {true, false}) {
    SCOPED_TRACE(fifo ? "a FIFO" : "a directory");
    TempDir dirs;
    const std::string log_dir = dirs.path() + "/logs";
    ASSERT_EQ(::mkdir(log_dir.c_str(), 0700), 0);
    const std::string newest = log_dir + "/access-00000000000000000001.jsonl";
    ASSERT_EQ(fifo ? ::mkfifo(newest.c_str(), 0600) : ::mkdir(newest.c_str(), 0700), 0);
    const ProcessResult run = run_keygate(
        {"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--workers", "1",
         "--data-dir", dirs.path() + "/data", "--log-dir", log_dir});
    EXPECT_TRUE(run.status.exited && run.status.code == 1)
        << run.status.describe() << "\n" << run.err;
    const std::string said =
        fifo ? "keygate: access log: access-00000000000000000001.jsonl in " + log_dir +
                   " is not a regular file\n"
             : "keygate: access log: cannot open access-00000000000000000001.jsonl: Is a "
               "directory\n";
    EXPECT_EQ(count_of(run.err, said), 1u) << run.err;
    EXPECT_EQ(count_of(run.err, "access log: access log:"), 0u) << run.err;
  }
}

// `ulimit -f` below segment_bytes_max killed keygate with SIGXFSZ (exit 153), data plane and
// all, once a segment reached it. Now segments rotate at the limit: keygate serves on, every
// record is written whole, no segment passes the limit.
TEST_F(AccessLogTest, AFileSizeLimitBelowSegmentBytesMaxNeitherKillsKeygateNorLosesRecords) {
  constexpr uint64_t kLimit = 256 << 10;
  wrapper_ = {"/usr/bin/prlimit", "--fsize=" + std::to_string(kLimit), "--"};
  ASSERT_NO_FATAL_FAILURE(start(2, "segment_bytes_max = 1048576"));
  EXPECT_NE(server_->error_output().find("segments rotate at 262144 bytes"), std::string::npos)
      << server_->error_output();
  const std::string key = "alog-fsize-" + random_hex(24);
  const CreatedKey k = create_key(kBootstrapAdminKey, json_key(key), {"orders"}, true, false);
  ASSERT_FALSE(k.id.empty());
  constexpr int kRequests = 120;  // ~8.5 KB records: ~1 MB of log, four limits' worth
  const std::string body = byte_pattern(8000);
  for (int i = 0; i < kRequests; ++i) {
    auto r = data(http_request("POST", "/orders/fsize-" + std::to_string(i),
                               {"X-ApiKey: " + key, "Content-Type: text/plain"}, body));
    ASSERT_TRUE(r && r->status == 200) << i << ": " << show(r) << "\nstderr: "
                                       << server_->error_output();
  }
  EXPECT_GE(wait_for_records(server_->log_dir(), kRequests + 1).records().size(),
            static_cast<size_t>(kRequests + 1));
  const ExitStatus status = server_->stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server_->error_output();
  const LogContents log = read_log(server_->log_dir());
  EXPECT_TRUE(log.bad_lines.empty()) << log.bad_lines.front().substr(0, 200);
  EXPECT_TRUE(log.unterminated.empty());
  size_t captured = 0;
  for (const Json* r : log.records()) {
    if (r->str("path").starts_with("/orders/fsize-")) ++captured;
  }
  EXPECT_EQ(captured, static_cast<size_t>(kRequests));
  const std::vector<std::string> segments = segment_files(server_->log_dir());
  EXPECT_GE(segments.size(), 4u);
  for (const std::string& segment : segments) {
    EXPECT_LE(std::filesystem::file_size(segment), kLimit) << segment;
  }
}

// The reviewer's repro: a FIFO in place of an old segment made GET /admin/logs?cursor=2 open
// it and wait for a writer forever, and every admin request after it (a key revocation too)
// waited behind it. The query now skips it (counted, said once on stderr) and answers; and log
// queries run beside the other admin requests anyway.
TEST_F(AccessLogTest, AFifoInPlaceOfASegmentNeitherHangsALogQueryNorHoldsUpKeyChanges) {
  ASSERT_NO_FATAL_FAILURE(start(2, "segment_bytes_max = 65536"));
  // ~400-byte records: over two segments.
  for (int i = 0; i < 300; ++i) {
    auto r = data(http_request("GET", "/orders/fill-" + std::to_string(i) + "-" + random_hex(100),
                               {}));
    ASSERT_TRUE(r && r->status == 401) << show(r);
  }
  ASSERT_EQ(wait_for_records(server_->log_dir(), 300).records().size(), 300u);
  std::vector<std::string> segments;
  for (int i = 0; i < 100 && segments.size() < 2; ++i) {
    segments = segment_files(server_->log_dir());
    std::this_thread::sleep_for(Millis(20));
  }
  ASSERT_GE(segments.size(), 2u);
  ASSERT_TRUE(segments.front().ends_with("access-00000000000000000001.jsonl")) << segments.front();
  std::filesystem::remove(segments.front());
  ASSERT_EQ(::mkfifo(segments.front().c_str(), 0644), 0);

  const auto started = Clock::now();
  auto page = admin("GET", "/admin/logs?cursor=2", kBootstrapAdminKey);
  ASSERT_TRUE(page.has_value()) << "the log query hung";
  EXPECT_EQ(page->status, 200) << page->raw;
  EXPECT_EQ(page->body, R"({"records":[],"next_cursor":null})");
  auto created = admin("POST", "/admin/keys", kBootstrapAdminKey, R"({"apis":["orders"]})");
  ASSERT_TRUE(created.has_value()) << "a key change waited behind the log query";
  EXPECT_EQ(created->status, 201) << created->raw;
  EXPECT_LT(Clock::now() - started, Millis(3000));
  // The rest of the log still reads.
  auto newest = admin("GET", "/admin/logs?limit=5", kBootstrapAdminKey);
  ASSERT_TRUE(newest && newest->status == 200) << show(newest);
  EXPECT_NE(newest->body.find("\"seq\":"), std::string::npos) << newest->body;
  auto stats = admin("GET", "/admin/stats", kBootstrapAdminKey);
  ASSERT_TRUE(stats && stats->status == 200) << show(stats);
  EXPECT_GE(number_member(stats->body, "query_segments_skipped"), 1) << stats->body;
  const std::string said = "access-00000000000000000001.jsonl (not a regular file): queries skip it";
  EXPECT_TRUE(server_->wait_for_error_output(said, Millis(3000))) << server_->error_output();
  EXPECT_EQ(count_of(server_->error_output(), said), 1u) << server_->error_output();
}

// A torn last line (keygate stopped mid-write) was cut off at the next start without a word:
// that is the end of a record that was lost. It is now said once on stderr and counted in
// /admin/stats.
TEST_F(AccessLogTest, ATornTailCutAtStartIsSaidOnStderrAndCounted) {
  dirs_ = std::make_unique<TempDir>();
  const std::string log_dir = dirs_->path() + "/logs";
  ASSERT_EQ(::mkdir(log_dir.c_str(), 0700), 0);
  const std::string whole = "{\"seq\":1,\"time_us\":1,\"path\":\"/orders/whole\"}\n";
  const std::string torn = "{\"seq\":2,\"time_us\":2,\"path\":\"/orders/to";
  {
    std::ofstream f(log_dir + "/access-00000000000000000001.jsonl", std::ios::binary);
    f << whole << torn;
  }
  ASSERT_NO_FATAL_FAILURE(start(2, "", dirs_->path() + "/data", log_dir));
  const std::string said = "keygate: access log: cut " + std::to_string(torn.size()) +
                           " bytes of a torn last line off the newest segment in " + log_dir +
                           " (keygate stopped while writing it)\n";
  EXPECT_TRUE(server_->wait_for_error_output(said, Millis(3000))) << server_->error_output();
  EXPECT_EQ(count_of(server_->error_output(), said), 1u) << server_->error_output();
  auto stats = admin("GET", "/admin/stats", kBootstrapAdminKey);
  ASSERT_TRUE(stats && stats->status == 200) << show(stats);
  EXPECT_EQ(number_member(stats->body, "torn_bytes_cut"), static_cast<int64_t>(torn.size()))
      << stats->body;
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  EXPECT_EQ(read_file(log_dir + "/access-00000000000000000001.jsonl").substr(0, whole.size()),
            whole);
}

// --- 6. Requests whose client leaves before the answer
// -----------------------------------------

// N admin creates, each connection reset (SO_LINGER {1, 0}) right after its request was sent:
// whatever point each request reached (not read, deferred, executed, answered), every key that
// was created has its record — with status 201, also when nobody heard the answer — and no
// request has two.
TEST_F(AccessLogTest, AdminCreatesWhoseClientResetsAreEachLoggedOnce) {
  dirs_ = std::make_unique<TempDir>();
  const std::string data_dir = dirs_->path() + "/data";
  const std::string log_dir = dirs_->path() + "/logs";
  ASSERT_NO_FATAL_FAILURE(start(2, "", data_dir, log_dir));
  constexpr int kCreates = 20;
  const std::string create =
      http_request("POST", "/admin/keys",
                   {"X-ApiKey: " + std::string(kBootstrapAdminKey),
                    "Content-Type: application/json"},
                   R"({"apis":["orders"],"description":"reset-after-send"})");
  for (int i = 0; i < kCreates; ++i) {
    RawClient c;
    ASSERT_TRUE(c.connect(server_->admin_port()));
    ASSERT_TRUE(c.send(create));
    if (i % 2 == 1)
      std::this_thread::sleep_for(Millis(1));
    c.reset();
  }
  // SIGTERM drains: every request still with the admin executor completes
  // (and is logged) before the log's last flush.
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  const LogContents log = read_log(log_dir);
  EXPECT_EQ(log.markers(), 0u) << "records were dropped";
  size_t posts = 0, created_records = 0;
  std::set<int64_t> request_ids;
  for (const Json *r : log.records()) {
    if (r->str("method") != "POST" || r->str("path") != "/admin/keys")
      continue;
    ++posts;
    request_ids.insert(r->num("request_id"));
    const int64_t status = r->num("status");
    EXPECT_TRUE(status == 201 || status == 499) << status;
    if (status == 201)
      ++created_records;
    if (status == 499) {
      EXPECT_EQ(r->str("reason"), "client_closed");
    }
  }
  EXPECT_EQ(request_ids.size(), posts) << "a request has two records";
  EXPECT_LE(posts, static_cast<size_t>(kCreates));
  EXPECT_GT(posts, 0u);

  // The keys that exist, from a server restarted on the same data.
  server_.reset();
  ASSERT_NO_FATAL_FAILURE(start(1, "", data_dir, log_dir));
  auto listed = admin("GET", "/admin/keys?limit=1000", kBootstrapAdminKey);
  ASSERT_TRUE(listed && listed->status == 200) << show(listed);
  const size_t keys = count_of(listed->body, "reset-after-send");
  EXPECT_EQ(created_records, keys)
      << keys << " keys were created, " << created_records
      << " records say so (of " << posts << " POST records)";
}

// A client that sends a data request's head and part of its body, then closes
// (FIN) or resets: the request gets one record, status 499 client_closed — on
// a data port that stops at heads (an API forwards) and on one that does not.
void expect_one_abandoned_record(const std::string &log_dir,
                                 const std::string &path) {
  const LogContents log = read_log(log_dir);
  size_t found = 0;
  for (const Json *r : log.records()) {
    if (r->str("path") != path)
      continue;
    ++found;
    EXPECT_EQ(r->str("method"), "POST") << path;
    EXPECT_EQ(r->num("status"), 499) << path;
    EXPECT_EQ(r->str("reason"), "client_closed") << path;
    EXPECT_GE(r->num("bytes_in"), 100) << path;
  }
  EXPECT_EQ(found, 1u) << path;
}

void abandon_mid_body(uint16_t port, const std::string &key,
                      const std::string &path, bool reset) {
  std::string request = http_request(
      "POST", path,
      {"X-ApiKey: " + key, "Content-Type: application/octet-stream"},
      std::string(1000, 'b'));
  request.resize(request.size() - 900); // 100 of the 1000 body bytes
  RawClient c;
  ASSERT_TRUE(c.connect(port));
  ASSERT_TRUE(c.send(request));
  // The head is read and the body awaited before the client leaves.
  std::this_thread::sleep_for(Millis(100));
  if (reset)
    c.reset();
  else
    c.close();
}

TEST_F(AccessLogTest, ADataRequestAbandonedMidBodyGetsOne499Record) {
  ASSERT_NO_FATAL_FAILURE(start(1, ""));
  const std::string key = "alog-midbody-" + random_hex(24);
  ASSERT_FALSE(create_key(kBootstrapAdminKey, json_key(key), {"orders"},
                          false, false)
                   .id.empty());
  ASSERT_NO_FATAL_FAILURE(
      abandon_mid_body(server_->data_port(), key, "/orders/mid-fin", false));
  ASSERT_NO_FATAL_FAILURE(
      abandon_mid_body(server_->data_port(), key, "/orders/mid-rst", true));
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  expect_one_abandoned_record(server_->log_dir(), "/orders/mid-fin");
  expect_one_abandoned_record(server_->log_dir(), "/orders/mid-rst");
}

// Creates a key with value `key` for API "orders" through `server`'s admin port.
void create_orders_key(const TestServer &server, const std::string &key) {
  auto created = round_trip(
      server.admin_port(),
      http_request("POST", "/admin/keys",
                   {"X-ApiKey: " + std::string(kBootstrapAdminKey),
                    "Content-Type: application/json"},
                   "{\"key\":\"" + key + "\",\"apis\":[\"orders\"]}"));
  ASSERT_TRUE(created && created->status == 201) << show(created);
}

// On a data port that reads whole requests (no API forwards) a record begins only once the body
// is in (or the request is abandoned or rejected), but it is dated from the request's first
// byte: time_us and duration_us cover the upload. An error answered after the head (a body
// timeout's 408, a 413 on Content-Length) names the request's method and path.
TEST(AccessLogNoForwarding, ARecordStartsAtTheRequestsFirstByteAndErrorsAfterTheHeadNameIt) {
  ServerOptions options = admin_server_options(std::string(kBootstrapAdminKey));
  options.workers = 1;
  options.limits = {{"body_timeout_ms", 1200}};
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  const std::string key = "alog-duration-" + random_hex(24);
  ASSERT_NO_FATAL_FAILURE(create_orders_key(server, key));
  const auto wall_us = [] {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  const std::vector<std::string> headers = {"X-ApiKey: " + key,
                                            "Content-Type: application/octet-stream"};
  // Head and 100 of 1000 body bytes, then nothing: 408 at the body timeout.
  std::string stalled_request =
      http_request("POST", "/orders/body-timeout", headers, std::string(1000, 'b'));
  stalled_request.resize(stalled_request.size() - 900);
  RawClient stalled;
  ASSERT_TRUE(stalled.connect(server.data_port()));
  ASSERT_TRUE(stalled.send(stalled_request));
  // A 10-byte body sent one byte every 70 ms: answered 200 after ~630 ms.
  const std::string upload = http_request("POST", "/orders/slow-upload", headers, "0123456789");
  RawClient slow;
  ASSERT_TRUE(slow.connect(server.data_port()));
  const int64_t upload_began_us = wall_us();
  ASSERT_TRUE(slow.send(upload.substr(0, upload.size() - 9)));
  for (size_t i = upload.size() - 9; i < upload.size(); ++i) {
    std::this_thread::sleep_for(Millis(70));
    ASSERT_TRUE(slow.send(upload.substr(i, 1)));
  }
  const std::optional<Response> uploaded = slow.read_response();
  ASSERT_TRUE(uploaded && uploaded->status == 200) << show(uploaded);
  // A client that leaves 400 ms into its body.
  std::string left_request = http_request("POST", "/orders/client-left", headers,
                                          std::string(1000, 'b'));
  left_request.resize(left_request.size() - 900);
  RawClient left;
  ASSERT_TRUE(left.connect(server.data_port()));
  ASSERT_TRUE(left.send(left_request));
  std::this_thread::sleep_for(Millis(400));
  left.close();
  // Content-Length beyond the port's body limit: 413 once the head is parsed.
  const std::optional<Response> too_large = round_trip(
      server.data_port(), "POST /orders/too-large HTTP/1.1\r\nHost: x\r\nX-ApiKey: " + key +
                              "\r\nContent-Length: 99999999999999\r\n\r\n");
  ASSERT_TRUE(too_large && too_large->status == 413) << show(too_large);
  const std::optional<Response> timed_out = stalled.read_response(Millis(3000));
  ASSERT_TRUE(timed_out && timed_out->status == 408) << show(timed_out);
  ASSERT_TRUE(server.stop(SIGTERM).clean());

  const LogContents log = read_log(server.log_dir());
  std::map<std::string, const Json *> by_path;
  for (const Json *r : log.records()) by_path[r->str("path")] = r;
  for (const char *path :
       {"/orders/slow-upload", "/orders/client-left", "/orders/body-timeout", "/orders/too-large"}) {
    ASSERT_EQ(by_path.count(path), 1u) << path << " has no record (a 408/413 record names no path?)";
    EXPECT_EQ(by_path[path]->str("method"), "POST") << path;
  }
  const Json *up = by_path["/orders/slow-upload"];
  EXPECT_EQ(up->num("status"), 200);
  EXPECT_GE(up->num("duration_us"), 500000);
  EXPECT_LE(up->num("time_us"), upload_began_us + 100000);  // not when the body was in
  const Json *gone = by_path["/orders/client-left"];
  EXPECT_EQ(gone->num("status"), 499);
  EXPECT_EQ(gone->str("reason"), "client_closed");
  EXPECT_GE(gone->num("duration_us"), 300000);
  const Json *late = by_path["/orders/body-timeout"];
  EXPECT_EQ(late->num("status"), 408);
  EXPECT_EQ(late->str("reason"), "request_timeout");
  EXPECT_GE(late->num("duration_us"), 1000000);
  EXPECT_EQ(by_path["/orders/too-large"]->num("status"), 413);
}

TEST(AccessLogNoForwarding, ADataRequestAbandonedMidBodyGetsOne499Record) {
  // No API forwards: the data port reads whole requests before the handler
  // sees them, so the record begins only when the client leaves.
  TestServer server(admin_server_options(std::string(kBootstrapAdminKey)));
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  const std::string key = "alog-midbody-nofw-" + random_hex(24);
  ASSERT_NO_FATAL_FAILURE(create_orders_key(server, key));
  ASSERT_NO_FATAL_FAILURE(
      abandon_mid_body(server.data_port(), key, "/orders/mid-fin", false));
  ASSERT_NO_FATAL_FAILURE(
      abandon_mid_body(server.data_port(), key, "/orders/mid-rst", true));
  ASSERT_TRUE(server.stop(SIGTERM).clean());
  expect_one_abandoned_record(server.log_dir(), "/orders/mid-fin");
  expect_one_abandoned_record(server.log_dir(), "/orders/mid-rst");
}

// Abandoned mid-body once its head was admitted (a forwarding data port's auth-check API, the
// admin port: their handlers note the key only with the whole request), a request's record is
// scrubbed of the key its head carries all the same.
TEST_F(AccessLogTest, ARequestAbandonedMidBodyAfterItsHeadIsScrubbedOfItsKey) {
  ASSERT_NO_FATAL_FAILURE(start(1, ""));
  const std::string key = "alog-midbody-head-" + random_hex(24);
  ASSERT_FALSE(create_key(kBootstrapAdminKey, json_key(key), {"orders"}, false, false).id.empty());
  const std::string admin_key(kBootstrapAdminKey);
  ASSERT_NO_FATAL_FAILURE(
      abandon_mid_body(server_->data_port(), key, "/orders/mid-head?token=" + key, false));
  ASSERT_NO_FATAL_FAILURE(abandon_mid_body(server_->admin_port(), admin_key,
                                           "/admin/keys?token=" + admin_key, false));
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  expect_one_abandoned_record(server_->log_dir(), "/orders/mid-head?token=[redacted]");
  expect_one_abandoned_record(server_->log_dir(), "/admin/keys?token=[redacted]");
  expect_no_form_of(server_->log_dir(), {key, kBootstrapAdminKey});
}

// The record such a request gets from its head alone is scrubbed of the key the head carries,
// like every other record (here a copy of it in the target).
TEST(AccessLogNoForwarding, ARequestAbandonedMidBodyIsScrubbedOfItsKey) {
  TestServer server(admin_server_options(std::string(kBootstrapAdminKey)));
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  const std::string key = "alog-midbody-copy-" + random_hex(24);
  ASSERT_NO_FATAL_FAILURE(create_orders_key(server, key));
  ASSERT_NO_FATAL_FAILURE(
      abandon_mid_body(server.data_port(), key, "/orders/mid-copy?token=" + key, false));
  ASSERT_TRUE(server.stop(SIGTERM).clean());
  expect_one_abandoned_record(server.log_dir(), "/orders/mid-copy?token=[redacted]");
  expect_no_form_of(server.log_dir(), {key});
}

// --- Requests keygate itself cut off

// The record of a request whose connection keygate ended says so: "write_timeout" when the
// client stopped reading its answer (idle_timeout_ms without send progress), "shutdown" when
// the drain deadline passed — not "client_closed", which blames the client.
TEST_F(AccessLogTest, RequestsKeygateCutOffNameTheCutNotTheClient) {
  ASSERT_NO_FATAL_FAILURE(start(1, "", {}, {},
                                {{"idle_timeout_ms", 300}, {"drain_timeout_ms", 300}}));
  const std::string key = "alog-cut-" + random_hex(24);
  ASSERT_FALSE(create_key(kBootstrapAdminKey, json_key(key), {"proxied", "orders"}, false, false)
                   .id.empty());

  // 64 MiB the client never reads: the send stalls, the write timeout cuts it.
  RawClient reader;
  ASSERT_TRUE(reader.connect(server_->data_port()));
  ASSERT_TRUE(reader.send(http_request("GET", "/bytes/67108864", {"X-ApiKey: " + key})));
  // A request mid-body when the server is told to stop: cut at the drain deadline.
  std::string partial = http_request(
      "POST", "/orders/cut-at-shutdown",
      {"X-ApiKey: " + key, "Content-Type: application/octet-stream"}, std::string(1000, 'b'));
  partial.resize(partial.size() - 900);
  RawClient writer;
  ASSERT_TRUE(writer.connect(server_->data_port()));
  ASSERT_TRUE(writer.send(partial));
  std::this_thread::sleep_for(Millis(1500));  // several write timeouts
  ASSERT_TRUE(server_->stop(SIGTERM).clean());

  const LogContents log = read_log(server_->log_dir());
  const Json *cut = nullptr;
  const Json *shutdown = nullptr;
  for (const Json *r : log.records()) {
    if (r->str("path") == "/bytes/67108864") cut = r;
    if (r->str("path") == "/orders/cut-at-shutdown") shutdown = r;
  }
  ASSERT_NE(cut, nullptr);
  EXPECT_EQ(cut->str("reason"), "write_timeout");
  EXPECT_EQ(cut->num("status"), 499);
  ASSERT_NE(shutdown, nullptr);
  EXPECT_EQ(shutdown->str("reason"), "shutdown");
  EXPECT_EQ(shutdown->num("status"), 499);
}

// --- Slow readers: [limits] send_buffer_bytes and send_rate_min_bytes_per_s

// [limits] send_buffer_bytes is the SO_SNDBUF of every accepted connection: the response bytes
// the kernel holds for a client that does not read stay within it (the kernel doubles the
// value for its bookkeeping, so at most twice it), where the kernel's autotuning would take up
// to 4 MiB (net.ipv4.tcp_wmem) on loopback.
TEST_F(AccessLogTest, SendBufferBytesBoundsWhatTheKernelHoldsForAClientThatDoesNotRead) {
  constexpr uint64_t kSendBuffer = 16384;
  ASSERT_NO_FATAL_FAILURE(start(1, "", {}, {},
                                {{"send_buffer_bytes", kSendBuffer},
                                 {"send_rate_min_bytes_per_s", 0}}));
  const std::string key = "alog-sndbuf-" + random_hex(24);
  ASSERT_FALSE(create_key(kBootstrapAdminKey, json_key(key), {"proxied"}, false, false)
                   .id.empty());
  // A large proxied response on the data port; on the admin port (which has no large
  // answer without many keys) 4,000 pipelined health checks, whose answers pile up as well.
  const int data = connect_with_receive_buffer(
      server_->data_port(), 4096, http_request("GET", "/bytes/4194304", {"X-ApiKey: " + key}));
  ASSERT_GE(data, 0) << std::strerror(errno);
  std::string checks;
  for (int i = 0; i < 4000; ++i) checks += http_request("GET", "/healthz");
  const int admin = connect_with_receive_buffer(server_->admin_port(), 4096, checks);
  ASSERT_GE(admin, 0) << std::strerror(errno);
  const std::optional<uint64_t> data_queued = settled_send_queue(server_->data_port(), data);
  const std::optional<uint64_t> admin_queued = settled_send_queue(server_->admin_port(), admin);
  ::close(data);
  ::close(admin);
  ASSERT_TRUE(data_queued.has_value());
  EXPECT_GT(*data_queued, 0u);
  EXPECT_LE(*data_queued, 2 * kSendBuffer);
  ASSERT_TRUE(admin_queued.has_value());
  EXPECT_GT(*admin_queued, 0u);
  EXPECT_LE(*admin_queued, 2 * kSendBuffer);
}

// A client that stops reading is cut by the write timeout (idle_timeout_ms of no progress)
// with a reset, as a too-slow one is: the kernel drops the response bytes it still held for
// that client at once. With a FIN instead, keygate's side of the connection would linger
// orphaned in FIN_WAIT1, its unsent bytes queued, probing the client's zero window for
// minutes (tcp_orphan_retries) — kernel memory a client that never reads could pile up.
TEST_F(AccessLogTest, AClientThatStopsReadingIsCutWithAResetThatDropsWhatItDidNotTake) {
  ASSERT_NO_FATAL_FAILURE(start(1, "", {}, {},
                                {{"send_buffer_bytes", 16384},
                                 {"send_rate_min_bytes_per_s", 0},
                                 {"idle_timeout_ms", 500}}));
  const std::string key = "alog-stalled-reader-" + random_hex(24);
  ASSERT_FALSE(create_key(kBootstrapAdminKey, json_key(key), {"proxied"}, false, false)
                   .id.empty());
  const int fd = connect_with_receive_buffer(
      server_->data_port(), 4096, http_request("GET", "/bytes/4194304", {"X-ApiKey: " + key}));
  ASSERT_GE(fd, 0) << std::strerror(errno);
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const uint16_t client_port = ntohs(addr.sin_port);
  // Unsent bytes pile up on keygate's side while the client reads nothing.
  const std::optional<uint64_t> queued = settled_send_queue(server_->data_port(), fd);
  ASSERT_TRUE(queued.has_value());
  EXPECT_GT(*queued, 0u);
  // The write timeout (500 ms after the last progress, seen at a 100 ms tick) has cut it by
  // now; keygate's side of the connection is gone, not lingering with its queue.
  std::optional<uint64_t> left = send_queue(server_->data_port(), client_port);
  for (int i = 0; i < 40 && left.has_value(); ++i) {
    std::this_thread::sleep_for(Millis(100));
    left = send_queue(server_->data_port(), client_port);
  }
  EXPECT_FALSE(left.has_value()) << "keygate's side still holds " << *left << " unsent bytes";
  // The client sees the reset.
  char buf[4096];
  ssize_t n = 0;
  do {
    n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  } while (n > 0);
  EXPECT_EQ(n, -1);
  EXPECT_EQ(errno, ECONNRESET) << std::strerror(errno);
  ::close(fd);
  ASSERT_TRUE(server_->stop(SIGTERM).clean());
  const LogContents log = read_log(server_->log_dir());
  const Json *record = record_for(log, "/bytes/4194304");
  ASSERT_NE(record, nullptr);
  EXPECT_EQ(record->str("reason"), "write_timeout");
}

// A client that takes a large response slower than [limits] send_rate_min_bytes_per_s is cut
// although it makes progress all the time (which keeps the write timeout away), once it is
// idle_timeout_ms of waiting behind the minimum: its record says "send_too_slow", and
// /admin/stats counts it. A client reading faster than the minimum, equally throttled, gets
// the whole response. Both read through small receive buffers against a small
// send_buffer_bytes, so keygate waits for them (with the kernel's autotuned buffer of up to
// 4 MiB the whole response would be taken at once, and no send ever waits).
TEST_F(AccessLogTest, AClientReadingBelowTheMinimumSendRateIsCutAndOneAboveItIsServed) {
  constexpr uint64_t kRateMin = 128 * 1024;
  constexpr uint64_t kSlackMs = 2000;  // idle_timeout_ms
  ASSERT_NO_FATAL_FAILURE(start(1, "", {}, {},
                                {{"send_buffer_bytes", 16384},
                                 {"send_rate_min_bytes_per_s", kRateMin},
                                 {"idle_timeout_ms", kSlackMs}}));
  const std::string key = "alog-slow-reader-" + random_hex(24);
  ASSERT_FALSE(create_key(kBootstrapAdminKey, json_key(key), {"proxied"}, false, false)
                   .id.empty());
  constexpr size_t kBytes = 1 << 20;
  const std::string path = "/bytes/" + std::to_string(kBytes);
  const std::string request = http_request("GET", path, {"X-ApiKey: " + key});

  // Every 20 ms the slow client reads at most 320 bytes (16 KB/s, an eighth of the minimum:
  // cut after about kSlackMs / (1 - 1/8) of waiting), the fast one 16 KiB (800 KiB/s).
  struct Reader {
    int fd = -1;
    size_t per_tick = 0;
    size_t received = 0;
    bool ended = false;
    Millis ended_after{0};
  };
  Reader slow{connect_with_receive_buffer(server_->data_port(), 4096, request), 320};
  Reader fast{connect_with_receive_buffer(server_->data_port(), 65536, request), 16384};
  ASSERT_GE(slow.fd, 0) << std::strerror(errno);
  ASSERT_GE(fast.fd, 0) << std::strerror(errno);
  const auto began = Clock::now();
  std::vector<char> buf(16384);
  while ((!slow.ended || !fast.ended) && Clock::now() - began < Millis(10000)) {
    for (Reader *r : {&slow, &fast}) {
      if (r->ended) continue;
      const ssize_t n = ::recv(r->fd, buf.data(), r->per_tick, MSG_DONTWAIT);
      if (n > 0) r->received += static_cast<size_t>(n);
      // EOF, or the reset keygate cuts with; a fast reader that has it all stops there too.
      r->ended = n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) ||
                 (r == &fast && r->received > kBytes);
      if (r->ended) r->ended_after = std::chrono::duration_cast<Millis>(Clock::now() - began);
    }
    std::this_thread::sleep_for(Millis(20));
  }
  ::close(slow.fd);
  ::close(fast.fd);
  EXPECT_TRUE(slow.ended) << "a 16 KB/s reader was not cut in 10 s (" << slow.received
                          << " bytes read)";
  EXPECT_LT(slow.received, kBytes);
  // Not before it was kSlackMs of waiting behind (each send's wait is measured on the loop's
  // coarse clock: a few ms of slack), and well within twice that.
  EXPECT_GE(slow.ended_after, Millis(kSlackMs - 100));
  EXPECT_LT(slow.ended_after, Millis(2 * kSlackMs + 1000));
  EXPECT_GT(fast.received, kBytes) << "the fast reader was cut";

  auto stats = admin("GET", "/admin/stats", kBootstrapAdminKey);
  ASSERT_TRUE(stats && stats->status == 200) << show(stats);
  EXPECT_EQ(stats_counter(stats->body, "workers", "send_too_slow"), 1) << stats->body;
  auto metrics = admin("GET", "/admin/metrics", kBootstrapAdminKey);
  ASSERT_TRUE(metrics && metrics->status == 200) << show(metrics);
  EXPECT_NE(metrics->body.find("\nkeygate_workers_send_too_slow_total 1\n"), std::string::npos)
      << metrics->body;
  EXPECT_NE(metrics->body.find(
                "\nkeygate_reasons_total{port=\"data\",reason=\"send_too_slow\"} 1\n"),
            std::string::npos)
      << metrics->body;
  ASSERT_TRUE(server_->stop(SIGTERM).clean());

  const LogContents log = read_log(server_->log_dir());
  std::vector<const Json *> records;
  for (const Json *r : log.records()) {
    if (r->str("path") == path) records.push_back(r);
  }
  ASSERT_EQ(records.size(), 2u);
  std::sort(records.begin(), records.end(),
            [](const Json *a, const Json *b) { return a->num("status") < b->num("status"); });
  EXPECT_EQ(records[0]->num("status"), 200);
  EXPECT_TRUE(records[0]->is_null("reason"));
  EXPECT_EQ(records[1]->num("status"), 499);
  EXPECT_EQ(records[1]->str("reason"), "send_too_slow");
}

// A second SIGTERM during the drain stops keygate now (an operator's second Ctrl-C, a
// supervisor escalating): a request mid-body would hold the 30 s drain, but keygate exits at
// once, cleanly (0, "stopped"), the cut request logged with reason "shutdown" and every record
// accepted before it on disk.
TEST_F(AccessLogTest, ASecondSigtermCutsTheDrainShortAndKeepsTheRecords) {
  ASSERT_NO_FATAL_FAILURE(start(1, "", {}, {}, {{"drain_timeout_ms", 30000}}));
  const std::string key = "alog-second-term-" + random_hex(24);
  ASSERT_NO_FATAL_FAILURE(create_orders_key(*server_, key));
  constexpr int kServed = 50;
  for (int i = 0; i < kServed; ++i) {
    const std::optional<Response> r = data(
        http_request("GET", "/orders/served-" + std::to_string(i), {"X-ApiKey: " + key}));
    ASSERT_TRUE(r && r->status == 200) << show(r);
  }
  std::string partial = http_request("POST", "/orders/held-the-drain",
                                     {"X-ApiKey: " + key, "Content-Type: application/octet-stream"},
                                     std::string(1000, 'b'));
  partial.resize(partial.size() - 900);
  RawClient writer;
  ASSERT_TRUE(writer.connect(server_->data_port()));
  ASSERT_TRUE(writer.send(partial));
  std::this_thread::sleep_for(Millis(100));  // the head is in: the request is in flight

  ASSERT_TRUE(server_->send_signal(SIGTERM));
  ASSERT_TRUE(server_->wait_for_output("draining", Millis(3000))) << server_->output();
  std::this_thread::sleep_for(Millis(200));
  const auto second = Clock::now();
  ASSERT_TRUE(server_->send_signal(SIGTERM));
  const ExitStatus status = server_->wait_exit(Millis(10000));
  const auto took = std::chrono::duration_cast<Millis>(Clock::now() - second);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server_->error_output();
  EXPECT_LT(took.count(), 3000) << "the second SIGTERM did not cut the 30 s drain short";
  EXPECT_NE(server_->output().find("keygate: second SIGTERM received"), std::string::npos)
      << server_->output();
  EXPECT_NE(server_->output().find("keygate: stopped"), std::string::npos) << server_->output();

  const LogContents log = read_log(server_->log_dir());
  int served = 0;
  const Json *cut = nullptr;
  for (const Json *r : log.records()) {
    if (r->str("path").starts_with("/orders/served-") && r->num("status") == 200) ++served;
    if (r->str("path") == "/orders/held-the-drain") cut = r;
  }
  EXPECT_EQ(served, kServed);
  ASSERT_NE(cut, nullptr);
  EXPECT_EQ(cut->num("status"), 499);
  EXPECT_EQ(cut->str("reason"), "shutdown");
}

// A data request whose key is being fetched from the store (a partial cache: the miss is read
// on the fetch pool, the request resumes later) when the drain deadline passes: its client is
// cut off, and once the fetch is back the request is logged like any request cut at shutdown
// (499, "shutdown") and its handler state freed (the sanitizer build exits non-zero on a leak).
// KEYGATE_TEST_FETCH_DELAY_MS holds every fetch for 1 s, so the request is in one for sure.
TEST(AccessLogShutdown, ARequestInAKeyFetchAtTheDrainDeadlineIsLoggedAndFreed) {
#ifndef KEYGATE_TEST_HOOKS
  GTEST_SKIP() << "needs keygate's test hooks (CMake KEYGATE_TEST_HOOKS)";
#endif
  ServerOptions options = admin_server_options(std::string(kBootstrapAdminKey));
  options.workers = 1;
  options.limits = {{"drain_timeout_ms", 200}};
  options.extra_config += "\n[cache]\nmax_keys = 1\n";
  options.env.emplace_back("KEYGATE_TEST_FETCH_DELAY_MS", "1000");
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error;
  // A cache of one entry: the second key (or the admin key, fetched again) evicts the first.
  const std::string key = "alog-in-fetch-" + random_hex(24);
  ASSERT_NO_FATAL_FAILURE(create_orders_key(server, key));
  ASSERT_NO_FATAL_FAILURE(create_orders_key(server, "alog-in-fetch-other-" + random_hex(24)));

  RawClient client;
  ASSERT_TRUE(client.connect(server.data_port()));
  ASSERT_TRUE(client.send(http_request("GET", "/orders/in-a-fetch", {"X-ApiKey: " + key})));
  ASSERT_FALSE(client.readable(Millis(300))) << "answered without a fetch: " << client.buffered();
  ASSERT_TRUE(server.send_signal(SIGTERM));
  const ExitStatus status = server.wait_exit(Millis(10000));
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server.error_output();
  EXPECT_NE(server.output().find("keygate: stopped"), std::string::npos) << server.output();
  client.read_until_close(Millis(1000));
  EXPECT_NE(client.last_end(), ReadEnd::kTimeout) << "the connection was left open";

  const LogContents log = read_log(server.log_dir());
  size_t records = 0;
  for (const Json *r : log.records()) {
    if (r->str("path") != "/orders/in-a-fetch") continue;
    ++records;
    EXPECT_EQ(r->num("status"), 499);
    EXPECT_EQ(r->str("reason"), "shutdown");
  }
  EXPECT_EQ(records, 1u) << "the request cut off in its key fetch has no record";
}

// An admin change still running at the drain deadline (a 100,000-key import, drain_timeout_ms
// = 100): its client is cut off, but the executor finishes it (exit waits for it) and its
// record says so — status 200, reason "shutdown" — as the store does; a change queued behind it
// is not run and is logged 503 "shutdown". Nothing leaks (the sanitizer build exits 1 on a
// leak), and keygate exits 0.
TEST_F(AccessLogTest, AnAdminChangeCutOffByTheDrainDeadlineIsStillLogged) {
  // The 100,000-key import, the exit that waits for it and the start that loads its keys take
  // longer than TestServer's deadlines at TSan's speed (keygate is killed: no record, no exit 0).
  KEYGATE_SKIP_UNDER_TSAN("imports 100,000 keys within the stop and start deadlines");
  dirs_ = std::make_unique<TempDir>();
  const std::string data_dir = dirs_->path() + "/data";
  const std::string log_dir = dirs_->path() + "/logs";
  ASSERT_NO_FATAL_FAILURE(start(1, "", data_dir, log_dir, {{"drain_timeout_ms", 100}}));
  constexpr int kKeys = 100000;
  const std::string prefix = "alog-drain-import-" + random_hex(12) + "-";
  std::string body = R"({"keys":[)";
  for (int i = 0; i < kKeys; ++i) {
    if (i > 0) body += ',';
    body += R"({"key":")" + prefix + std::to_string(i) + R"(","apis":["orders"]})";
  }
  body += "]}";
  const std::vector<std::string> headers = {"X-ApiKey: " + std::string(kBootstrapAdminKey),
                                            "Content-Type: application/json"};
  RawClient importer;
  ASSERT_TRUE(importer.connect(server_->admin_port()));
  ASSERT_TRUE(importer.send(http_request("POST", "/admin/keys/import", headers, body)));
  std::this_thread::sleep_for(Millis(100));  // read, and with the executor
  RawClient creator;
  ASSERT_TRUE(creator.connect(server_->admin_port()));
  ASSERT_TRUE(creator.send(http_request("POST", "/admin/keys", headers,
                                        R"({"apis":["orders"],"description":"queued-at-drain"})")));
  std::this_thread::sleep_for(Millis(50));  // queued behind the import
  const ExitStatus status = server_->stop(SIGTERM);
  EXPECT_TRUE(status.clean()) << status.describe() << "\nstderr: " << server_->error_output();
  const std::optional<Response> heard = importer.read_response(Millis(500));
  EXPECT_FALSE(heard.has_value()) << "the import was answered before the deadline: "
                                  << heard->status;

  const LogContents log = read_log(log_dir);
  size_t imports = 0, creates = 0;
  for (const Json *r : log.records()) {
    if (r->str("path") == "/admin/keys/import") {
      ++imports;
      EXPECT_EQ(r->num("status"), 200);
      EXPECT_EQ(r->str("reason"), "shutdown");
    } else if (r->str("path") == "/admin/keys" && r->str("method") == "POST") {
      ++creates;
      EXPECT_EQ(r->num("status"), 503);
      EXPECT_EQ(r->str("reason"), "shutdown");
    }
  }
  EXPECT_EQ(imports, 1u);
  EXPECT_EQ(creates, 1u);

  // As the records say: the import's keys exist, the queued create made nothing.
  server_.reset();
  ASSERT_NO_FATAL_FAILURE(start(1, "", data_dir, log_dir));
  const std::optional<Response> last =
      data(http_request("GET", "/orders/1", {"X-ApiKey: " + prefix + std::to_string(kKeys - 1)}));
  EXPECT_TRUE(last && last->status == 200) << show(last);
  const std::optional<Response> listed = admin("GET", "/admin/keys?limit=1000", kBootstrapAdminKey);
  ASSERT_TRUE(listed && listed->status == 200) << show(listed);
  EXPECT_EQ(listed->body.find("queued-at-drain"), std::string::npos);
}

// --- Where the log lives when no log_dir is configured

// Without server.log_dir / --log-dir the log follows the data directory (<data_dir>/logs),
// wherever the process runs; with logging disabled no log directory is made at all.
TEST(AccessLogDirectory, DefaultsToLogsInsideTheDataDirectory) {
  for (const bool enabled : {true, false}) {
    SCOPED_TRACE(enabled ? "logging enabled" : "logging disabled");
    ServerOptions options = admin_server_options(std::string(kBootstrapAdminKey));
    options.log_dir_flag = false;
    if (!enabled) options.extra_config += "\n[log]\nenabled = false\n";
    TestServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    EXPECT_EQ(server.log_dir(), server.data_dir() + "/logs");
    auto health = round_trip(server.data_port(), http_request("GET", "/healthz", {}, ""));
    ASSERT_TRUE(health && health->status == 200) << show(health);
    ASSERT_TRUE(server.stop(SIGTERM).clean());
    if (enabled) {
      const std::vector<std::string> files = segment_files(server.log_dir());
      ASSERT_EQ(files.size(), 1u);
      EXPECT_NE(read_file(files[0]).find("\"path\":\"/healthz\""), std::string::npos);
    } else {
      EXPECT_FALSE(std::filesystem::exists(server.log_dir()));
    }
  }
}

// --- 7. A request body the upstream did not wait for
// -------------------------------------------

// An upstream on 127.0.0.1 that answers each connection's first request as soon as its head
// has arrived, reading (and dropping) the rest of the body only afterwards, for at most 3 s.
class EarlyAnsweringUpstream {
public:
  bool start() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr *>(&a), len) != 0 ||
        ::listen(fd_, 8) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr *>(&a), &len) != 0) {
      return false;
    }
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
    return true;
  }
  ~EarlyAnsweringUpstream() {
    stop_ = true;
    if (thread_.joinable())
      thread_.join();
    if (fd_ >= 0)
      ::close(fd_);
  }
  uint16_t port() const { return port_; }

private:
  void serve() {
    const auto deadline = Clock::now() + Millis(10000);
    while (!stop_ && Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0)
        continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0)
        continue;
      std::string in;
      char buf[4096];
      const auto until = Clock::now() + Millis(3000);
      bool answered = false;
      while (!stop_ && Clock::now() < until) {
        pollfd q{c, POLLIN, 0};
        if (::poll(&q, 1, 50) <= 0)
          continue;
        const ssize_t n = ::read(c, buf, sizeof(buf));
        if (n <= 0)
          break;
        if (answered)
          continue;
        in.append(buf, static_cast<size_t>(n));
        if (in.find("\r\n\r\n") == std::string::npos)
          continue;
        const std::string_view answer =
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        (void)!::write(c, answer.data(), answer.size());
        answered = true;
      }
      ::close(c);
    }
  }

  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The upstream answers before the request body is all there: keygate stops
// reading it, so the captured request body is only a part, and says so.
TEST(AccessLogEarlyAnswer, ABodyTheUpstreamDidNotWaitForIsMarkedTruncated) {
  EarlyAnsweringUpstream upstream;
  ASSERT_TRUE(upstream.start());
  ServerOptions options = admin_server_options(std::string(kBootstrapAdminKey));
  options.workers = 1;
  options.extra_config += "\n[[apis]]\nname = \"early\"\nroutes = [\"/early\"]\n"
                          "upstreams = [\"127.0.0.1:" +
                          std::to_string(upstream.port()) + "\"]\n";
  TestServer server(options);
  std::string error;
  ASSERT_TRUE(server.start(&error)) << error << server.error_output();
  const std::string key = "alog-early-" + random_hex(24);
  auto created = round_trip(
      server.admin_port(),
      http_request("POST", "/admin/keys",
                   {"X-ApiKey: " + std::string(kBootstrapAdminKey),
                    "Content-Type: application/json"},
                   "{\"key\":\"" + key +
                       "\",\"apis\":[\"early\"],\"log_request\":true}"));
  ASSERT_TRUE(created && created->status == 201) << show(created);

  // 1000 of 100000 body bytes: far below capture_bytes_max.
  std::string request = http_request(
      "POST", "/early/upload",
      {"X-ApiKey: " + key, "Content-Type: application/octet-stream"},
      std::string(100000, 'u'));
  request.resize(request.size() - 99000);
  RawClient client;
  ASSERT_TRUE(client.connect(server.data_port()));
  ASSERT_TRUE(client.send(request));
  const std::optional<Response> r = client.read_response();
  ASSERT_TRUE(r && r->status == 200) << show(r);
  client.close();
  ASSERT_TRUE(server.stop(SIGTERM).clean());

  const LogContents log = read_log(server.log_dir());
  const Json *record = record_for(log, "/early/upload");
  ASSERT_NE(record, nullptr);
  EXPECT_EQ(record->num("status"), 200);
  EXPECT_LE(captured(*record, "request", "body").size(), 1000u);
  EXPECT_EQ(truncated_flag(*record, "request"), 1)
      << "a request body cut short is logged as if whole";
}

} // namespace
} // namespace keygate::integration
