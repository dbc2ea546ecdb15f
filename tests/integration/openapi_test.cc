// docs/openapi.yaml against the server: every documented (path, method) is routed by a running
// keygate, every route of the admin API's table is documented, and for every documented path
// the server's Allow header lists exactly the documented methods.
//
// The document is read by a tiny line-based reader of its `paths:` section, not a YAML library.
// It relies on the block style docs/openapi.yaml is written in, and fails loudly (not silently
// skips) on what it does not understand:
//   - `paths:` is a top-level key on a line of its own; the section ends at the next line that
//     starts at column 0 (another top-level key). Indentation is spaces, two per level.
//   - a path item is a key at indent 2 that starts with '/', unquoted (`  /admin/keys:`), never a
//     flow mapping or a $ref; `x-` extension keys at that level are ignored;
//   - an operation is a key at indent 4 named get/put/post/delete/options/head/patch/trace;
//     other keys at indent 4 (parameters, summary, ...) are not operations;
//   - an operation's status codes are the keys at indent 8 under its `responses:` key at
//     indent 6, quoted or not ("200", default);
//   - an operation's own parameters are the list items at indent 8 under its `parameters:` key
//     at indent 6, each `- $ref: "#/components/parameters/NAME"` (read as NAME) or an inline
//     object whose first line is `- name: NAME`; a path item's shared parameters are not read;
//   - block scalars (`|`, `>` and their variants) are skipped whole; multi-line plain scalars
//     continue on lines indented deeper than their key (as YAML requires), where no structural
//     key is looked for; blank lines and comment lines are ignored; no anchors or aliases.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/console_assets.h"
#include "tests/integration/running_server.h"
#include "tests/integration/test_server.h"

namespace keygate::integration {
namespace {

// The admin API's routes as core/admin_api.h lists them (its header comment and match_route /
// allowed_methods in core/admin_api.cc). Whoever adds a route there adds it here; the test then
// fails until docs/openapi.yaml documents it.
struct Route {
  std::string_view method;
  std::string_view path;
};
constexpr std::array<Route, 19> kServerRoutes = {{
    {"POST", "/admin/keys"},
    {"GET", "/admin/keys"},
    {"GET", "/admin/keys/{id}"},
    {"PATCH", "/admin/keys/{id}"},
    {"DELETE", "/admin/keys/{id}"},
    {"POST", "/admin/keys/{id}/rotate"},
    {"POST", "/admin/keys/import"},
    {"POST", "/admin/users"},
    {"GET", "/admin/users"},
    {"GET", "/admin/users/{name}"},
    {"PATCH", "/admin/users/{name}"},
    {"DELETE", "/admin/users/{name}"},
    {"GET", "/admin/apis"},
    {"GET", "/admin/logs"},
    {"GET", "/admin/stats"},
    {"GET", "/admin/metrics"},
    {"POST", "/admin/reload"},
    {"POST", "/admin/backups"},
    {"GET", "/admin/backups"},
}};
// Served on the admin port besides the admin API: /healthz (core/builtin_handler.cc) and every
// file of the web console (core/console_assets.h), each with GET and HEAD.
std::vector<Route> builtin_routes() {
  std::vector<Route> routes = {{"GET", "/healthz"}, {"HEAD", "/healthz"}};
  for (const ConsoleAsset& asset : console_assets()) {
    routes.push_back({"GET", asset.path});
    routes.push_back({"HEAD", asset.path});
  }
  return routes;
}

// Values for path templates: well-formed, and naming nothing that exists.
constexpr std::array<std::pair<std::string_view, std::string_view>, 2> kPlaceholders = {{
    {"{id}", "k000000000000"},
    {"{name}", "openapi-test-no-such-user"},
}};

// The two messages of a 404 for a path that names no route (core/admin_handler.cc answers
// before authentication; core/admin_api.cc's execute_admin() after): a 404 for a missing id or
// name says "no key with this id" / "no user with this name" instead.
constexpr std::array<std::string_view, 2> kUnknownRouteMessages = {"no such route",
                                                                   "no such admin route"};

struct DocOperation {
  std::string method;  // uppercase
  std::string path;    // as documented, templates included
  std::vector<std::string> statuses;
  std::vector<std::string> parameters;  // a component's name ("Limit") or an inline one's
  int line = 0;
};

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

std::string_view unquote(std::string_view s) {
  if (s.size() >= 2 && (s.front() == '"' || s.front() == '\'') && s.back() == s.front()) {
    return s.substr(1, s.size() - 2);
  }
  return s;
}

bool is_http_method_key(std::string_view key) {
  static constexpr std::array<std::string_view, 8> kMethods = {"get",     "put",  "post",  "delete",
                                                               "options", "head", "patch", "trace"};
  return std::find(kMethods.begin(), kMethods.end(), key) != kMethods.end();
}

// The operations of the document's `paths:` section (see the file comment for what it
// understands). False with a message naming the line on anything else.
bool read_operations(std::string_view yaml, std::vector<DocOperation>* out, std::string* error) {
  out->clear();
  bool in_paths = false;
  bool seen_paths = false;
  std::string path;
  DocOperation* op = nullptr;
  bool in_responses = false;
  bool in_parameters = false;
  bool in_extension = false;                       // inside an x- key of the paths object
  size_t block_scalar_indent = std::string::npos;  // skip lines deeper than this
  int line_number = 0;
  size_t pos = 0;
  while (pos < yaml.size()) {
    const size_t eol = yaml.find('\n', pos);
    std::string_view line = yaml.substr(pos, eol == std::string_view::npos ? eol : eol - pos);
    pos = eol == std::string_view::npos ? yaml.size() : eol + 1;
    ++line_number;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
    const size_t indent = line.find_first_not_of(' ');
    if (indent == std::string_view::npos) continue;  // blank
    if (block_scalar_indent != std::string::npos) {
      if (indent > block_scalar_indent) continue;
      block_scalar_indent = std::string::npos;
    }
    const std::string_view text = line.substr(indent);
    if (text.front() == '#') continue;
    const auto fail = [&](std::string_view what) {
      *error = "docs/openapi.yaml:" + std::to_string(line_number) + ": " + std::string(what) +
               ": '" + std::string(line) + "'";
      return false;
    };
    if (text.front() == '\t') return fail("tab in indentation");
    // "key: value" or "key:"; list items and continuation lines have no structural key.
    const size_t colon = text.find(": ");
    const bool ends_with_colon = text.back() == ':';
    std::string_view key;
    std::string_view value;
    if (ends_with_colon && (colon == std::string_view::npos || colon == text.size() - 1)) {
      key = text.substr(0, text.size() - 1);
    } else if (colon != std::string_view::npos) {
      key = text.substr(0, colon);
      value = text.substr(colon + 2);
      while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    }
    if (!value.empty() && (value.front() == '|' || value.front() == '>')) {
      block_scalar_indent = indent;
    }
    if (indent == 0) {
      in_paths = key == "paths" && value.empty();
      seen_paths = seen_paths || in_paths;
      op = nullptr;
      path.clear();
      in_extension = false;
      continue;
    }
    if (!in_paths) continue;
    if (indent % 2 != 0) continue;  // continuation of a plain scalar
    if (indent == 2) {
      op = nullptr;
      path.clear();
      in_extension = key.starts_with("x-");
      if (in_extension) continue;
      if (!key.starts_with("/") || !value.empty()) return fail("expected a path item '/...:'");
      path = std::string(key);
      continue;
    }
    if (in_extension) continue;
    if (indent == 4) {
      in_responses = false;
      op = nullptr;
      if (!is_http_method_key(key)) continue;
      if (path.empty()) return fail("an operation outside a path item");
      if (!value.empty()) return fail("an operation must be a block mapping");
      out->push_back(DocOperation{upper(key), path, {}, {}, line_number});
      op = &out->back();
      continue;
    }
    if (op == nullptr) continue;
    if (indent == 6) {
      in_responses = key == "responses";
      in_parameters = key == "parameters";
      continue;
    }
    if (indent == 8 && in_parameters) {
      constexpr std::string_view kRef = "- $ref: ";
      constexpr std::string_view kName = "- name: ";
      if (text.starts_with(kRef)) {
        const std::string_view ref = unquote(text.substr(kRef.size()));
        if (!ref.starts_with("#/components/parameters/")) return fail("not a parameter $ref");
        op->parameters.emplace_back(ref.substr(ref.rfind('/') + 1));
      } else if (text.starts_with(kName)) {
        op->parameters.emplace_back(unquote(text.substr(kName.size())));
      } else {
        return fail("a parameter is '- $ref: ...' or starts with '- name: ...'");
      }
    }
    if (indent == 8 && in_responses && !key.empty()) {
      op->statuses.emplace_back(unquote(key));
    }
  }
  if (!seen_paths) {
    *error = "docs/openapi.yaml has no top-level 'paths:'";
    return false;
  }
  for (const DocOperation& o : *out) {
    if (o.statuses.empty()) {
      *error = "docs/openapi.yaml:" + std::to_string(o.line) + ": " + o.method + " " + o.path +
               " documents no responses";
      return false;
    }
  }
  return true;
}

std::vector<DocOperation> load_operations() {
  const std::string text = read_text_file(KEYGATE_SOURCE_DIR "/docs/openapi.yaml");
  EXPECT_FALSE(text.empty()) << "cannot read docs/openapi.yaml";
  std::vector<DocOperation> ops;
  std::string error;
  EXPECT_TRUE(read_operations(text, &ops, &error)) << error;
  return ops;
}

bool documented(const std::vector<DocOperation>& ops, std::string_view method,
                std::string_view path) {
  return std::any_of(ops.begin(), ops.end(),
                     [&](const DocOperation& o) { return o.method == method && o.path == path; });
}

// The documented path with every template replaced by its placeholder; "" for an unknown
// template.
std::string concrete_path(std::string_view path) {
  std::string out(path);
  for (const auto& [name, value] : kPlaceholders) {
    for (size_t at = out.find(name); at != std::string::npos; at = out.find(name)) {
      out.replace(at, name.size(), value);
    }
  }
  return out.find('{') == std::string::npos ? out : "";
}

std::set<std::string> split_allow(std::string_view allow) {
  std::set<std::string> out;
  while (!allow.empty()) {
    const size_t comma = allow.find(',');
    std::string_view item = allow.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty()) out.emplace(item);
    allow = comma == std::string_view::npos ? std::string_view() : allow.substr(comma + 1);
  }
  return out;
}

// --- The document alone ------------------------------------------------------------------------

TEST(OpenApiReader, ReadsPathsMethodsAndStatusesAndSkipsEverythingElse) {
  constexpr std::string_view kYaml =
      "openapi: 3.0.3\n"
      "info:\n"
      "  description: |\n"
      "    paths:\n"
      "      /not/a/path:\n"
      "paths:\n"
      "  /a/{id}:\n"
      "    parameters:\n"
      "      - name: id\n"
      "    get:\n"
      "      description: |\n"
      "        get:\n"
      "        responses:\n"
      "      summary: two\n"
      "        lines\n"
      "      parameters:\n"
      "        - $ref: \"#/components/parameters/Limit\"\n"
      "        - name: status\n"
      "          in: query\n"
      "      responses:\n"
      "        \"200\":\n"
      "          description: ok\n"
      "        default:\n"
      "          description: error\n"
      "    post:\n"
      "      responses:\n"
      "        \"201\":\n"
      "          description: made\n"
      "  x-extension:\n"
      "    get: nothing\n"
      "components:\n"
      "  /b:\n"
      "    get:\n"
      "      responses: {}\n";
  std::vector<DocOperation> ops;
  std::string error;
  ASSERT_TRUE(read_operations(kYaml, &ops, &error)) << error;
  ASSERT_EQ(ops.size(), 2u);
  EXPECT_EQ(ops[0].method, "GET");
  EXPECT_EQ(ops[0].path, "/a/{id}");
  EXPECT_EQ(ops[0].statuses, (std::vector<std::string>{"200", "default"}));
  EXPECT_EQ(ops[0].parameters, (std::vector<std::string>{"Limit", "status"}));
  EXPECT_EQ(ops[1].method, "POST");
  EXPECT_EQ(ops[1].statuses, (std::vector<std::string>{"201"}));
  EXPECT_TRUE(ops[1].parameters.empty()) << "the path item's own parameters are not read";

  EXPECT_FALSE(read_operations("paths:\n  \"/quoted\":\n", &ops, &error));
  EXPECT_FALSE(read_operations("paths:\n  /x:\n    get:\n      summary: none\n", &ops, &error))
      << "an operation without responses is refused";
  EXPECT_FALSE(read_operations("openapi: 3.0.3\n", &ops, &error));
  EXPECT_FALSE(read_operations(
      "paths:\n  /x:\n    get:\n      parameters:\n        - in: query\n      responses:\n"
      "        \"200\":\n",
      &ops, &error))
      << "an inline parameter that does not start with its name is refused";
  EXPECT_NE(error.find("a parameter is"), std::string::npos) << error;
}

TEST(OpenApiDocument, DocumentsTheApiKeySchemesAndTheErrorShape) {
  const std::string text = read_text_file(KEYGATE_SOURCE_DIR "/docs/openapi.yaml");
  ASSERT_TRUE(text.starts_with("openapi: 3.0.")) << "an OpenAPI 3.0 document";
  EXPECT_NE(text.find("      type: apiKey\n      in: header\n      name: X-ApiKey\n"),
            std::string::npos);
  EXPECT_NE(text.find("      type: apiKey\n      in: query\n      name: key\n"), std::string::npos);
  EXPECT_NE(text.find("      required: [error, field, message]\n"), std::string::npos);
}

TEST(OpenApiDocument, EveryRouteOfTheServerIsDocumentedAndNothingElse) {
  const std::vector<DocOperation> ops = load_operations();
  ASSERT_FALSE(ops.empty());
  for (const Route& r : kServerRoutes) {
    EXPECT_TRUE(documented(ops, r.method, r.path))
        << r.method << " " << r.path << " is routed by core/admin_api.cc but not documented";
  }
  const std::vector<Route> builtin = builtin_routes();
  for (const Route& r : builtin) {
    EXPECT_TRUE(documented(ops, r.method, r.path)) << r.method << " " << r.path;
  }
  for (const DocOperation& o : ops) {
    const auto same = [&](const Route& r) { return r.method == o.method && r.path == o.path; };
    EXPECT_TRUE(std::any_of(kServerRoutes.begin(), kServerRoutes.end(), same) ||
                std::any_of(builtin.begin(), builtin.end(), same))
        << o.method << " " << o.path << " (docs/openapi.yaml:" << o.line
        << ") is documented but not in kServerRoutes";
  }
}

bool is_identifier_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// The web console (core/console/app.js, as embedded in the binary) calls the admin API only
// through its ROUTES table (`name: '/admin/...'`) and api('METHOD', 'name', ...) calls with
// literal arguments. Every path of the table and every (method, path) of a call must be
// documented, so the console cannot drift from the API: a renamed route or a method the API
// does not serve fails here, not in an operator's browser. An admin path spelled anywhere else
// in the script (a template string, a concatenation) or a call this reading cannot resolve fails
// too.
TEST(OpenApiDocument, EveryAdminCallOfTheConsoleIsDocumented) {
  const std::vector<DocOperation> ops = load_operations();
  ASSERT_FALSE(ops.empty());
  const ConsoleAsset* asset = find_console_asset("/console/app.js");
  ASSERT_NE(asset, nullptr);
  const std::string script(asset->body);

  // ROUTES: lines `  name: '/admin/...',`.
  std::map<std::string, std::string> routes;  // ROUTES name -> documented path
  for (size_t at = script.find("\n  "); at != std::string::npos; at = script.find("\n  ", at + 1)) {
    const size_t name_begin = at + 3;
    size_t name_end = name_begin;
    while (name_end < script.size() && is_identifier_char(script[name_end])) ++name_end;
    if (name_end == name_begin || script.compare(name_end, 4, ": '/") != 0) continue;
    const size_t path_begin = name_end + 3;
    const size_t path_end = script.find("',", path_begin);
    ASSERT_NE(path_end, std::string::npos);
    const std::string name = script.substr(name_begin, name_end - name_begin);
    const std::string path = script.substr(path_begin, path_end - path_begin);
    EXPECT_TRUE(routes.emplace(name, path).second) << "ROUTES names " << name << " twice";
    EXPECT_TRUE(
        std::any_of(ops.begin(), ops.end(), [&](const DocOperation& o) { return o.path == path; }))
        << "the console's route " << name << " = " << path << " is not in docs/openapi.yaml";
  }
  ASSERT_GE(routes.size(), 8u) << "the ROUTES table of app.js was not found";
  EXPECT_EQ(count_of(script, "/admin"), routes.size())
      << "app.js spells an admin path outside its ROUTES table";

  // Calls: every `api(` with arguments is the function's definition or api('METHOD', 'name'
  // (comments say "api()").
  std::set<std::string> used;
  size_t calls = 0;
  for (size_t at = script.find("api("); at != std::string::npos; at = script.find("api(", at + 1)) {
    if ((at > 0 && is_identifier_char(script[at - 1])) || script.compare(at, 5, "api()") == 0) {
      continue;
    }
    if (script.compare(at, 11, "api(method,") == 0) continue;  // the definition
    const size_t method_begin = at + 5;
    size_t method_end = method_begin;
    while (method_end < script.size() && script[method_end] >= 'A' && script[method_end] <= 'Z') {
      ++method_end;
    }
    const size_t name_begin = method_end + 4;
    size_t name_end = name_begin;
    while (name_end < script.size() && is_identifier_char(script[name_end])) ++name_end;
    if (script.compare(at, 5, "api('") != 0 || method_end == method_begin ||
        script.compare(method_end, 4, "', '") != 0 || name_end == name_begin ||
        script.compare(name_end, 1, "'") != 0) {
      ADD_FAILURE() << "an api() call whose method or route is not a literal: "
                    << script.substr(at, 40);
      continue;
    }
    ++calls;
    const std::string method = script.substr(method_begin, method_end - method_begin);
    const std::string name = script.substr(name_begin, name_end - name_begin);
    const auto route = routes.find(name);
    if (route == routes.end()) {
      ADD_FAILURE() << "app.js calls api() with '" << name << "', which ROUTES lacks";
      continue;
    }
    used.insert(name);
    EXPECT_TRUE(documented(ops, method, route->second))
        << "app.js calls " << method << " " << route->second
        << ", which docs/openapi.yaml does not document";
  }
  EXPECT_GE(calls, 12u);
  for (const auto& [name, path] : routes) {
    EXPECT_EQ(used.count(name), 1u) << "ROUTES has " << name << ", which no call uses";
  }
}

// --- The document against a running server -----------------------------------------------------

class OpenApi : public RunningServer {
 protected:
  ServerOptions server_options() override {
    ServerOptions options;
    options.workers = 1;
    options.extra_config = "[[apis]]\nname = \"orders\"\nroutes = [\"/orders\"]\n";
    options.env = {{"KEYGATE_BOOTSTRAP_ADMIN_KEY", admin_value_}};
    options.capture_stderr = true;
    return options;
  }

  // `method` `target` with the admin key; POST and PATCH carry an empty JSON object, which no
  // route accepts as a change (create and import miss required members, patches need one), so
  // probing a route never alters the store.
  std::optional<Response> admin(std::string_view method, const std::string& target) {
    std::string bytes = std::string(method) + " " + target + " HTTP/1.1\r\nHost: it\r\n" +
                        "X-ApiKey: " + admin_value_ + "\r\n";
    const bool with_body = method == "POST" || method == "PATCH" || method == "PUT";
    if (with_body) bytes += "Content-Type: application/json\r\nContent-Length: 2\r\n";
    bytes += "\r\n";
    if (with_body) bytes += "{}";
    RawClient client;
    std::string error;
    if (!client.connect(server_->admin_port(), &error)) {
      ADD_FAILURE() << "connect: " << error;
      return std::nullopt;
    }
    if (!client.send(bytes)) return std::nullopt;
    return client.read_response(Millis(3000), /*head=*/method == "HEAD");
  }

  const std::string admin_value_ = "openapi-test-admin-key-0123456789";
};

TEST_F(OpenApi, EveryDocumentedOperationIsRoutedByTheServer) {
  const std::vector<DocOperation> ops = load_operations();
  ASSERT_FALSE(ops.empty());
  for (const DocOperation& o : ops) {
    SCOPED_TRACE(o.method + " " + o.path);
    const std::string target = concrete_path(o.path);
    ASSERT_FALSE(target.empty()) << "a path template without a placeholder in kPlaceholders";
    const std::optional<Response> r = admin(o.method, target);
    ASSERT_TRUE(r.has_value()) << "no response";
    EXPECT_NE(r->status, 405) << show(r);
    EXPECT_TRUE(std::find(o.statuses.begin(), o.statuses.end(), std::to_string(r->status)) !=
                o.statuses.end())
        << "status " << r->status << " is not documented for this operation; " << show(r);
    if (r->status == 404) {
      // A missing id or name is fine; the 404 of a path that names no route is not.
      EXPECT_EQ(string_member(r->body, "error"), "not_found") << show(r);
      const std::string message = string_member(r->body, "message");
      EXPECT_FALSE(message.empty()) << show(r);
      for (std::string_view unknown : kUnknownRouteMessages) {
        EXPECT_NE(message, unknown) << "the server does not route this path; " << show(r);
      }
    }
  }
}

TEST_F(OpenApi, TheServerAllowsExactlyTheDocumentedMethodsOnEveryDocumentedPath) {
  const std::vector<DocOperation> ops = load_operations();
  ASSERT_FALSE(ops.empty());
  std::set<std::string> paths;
  for (const DocOperation& o : ops) paths.insert(o.path);
  for (const std::string& path : paths) {
    SCOPED_TRACE(path);
    std::set<std::string> methods;
    for (const DocOperation& o : ops) {
      if (o.path == path) methods.insert(o.method);
    }
    // A method the document does not list on this path must be 405, and the Allow header must
    // list exactly the documented ones.
    std::string probe;
    for (const char* m : {"PUT", "DELETE", "PATCH", "POST", "GET"}) {
      if (methods.count(m) == 0) {
        probe = m;
        break;
      }
    }
    ASSERT_FALSE(probe.empty());
    const std::optional<Response> r = admin(probe, concrete_path(path));
    ASSERT_TRUE(r.has_value()) << "no response";
    ASSERT_EQ(r->status, 405) << probe << " " << path << "; " << show(r);
    const std::optional<std::string> allow = r->header("Allow");
    ASSERT_TRUE(allow.has_value()) << show(r);
    EXPECT_EQ(split_allow(*allow), methods) << "Allow: " << *allow;
  }
}

// A listing documented with the shared Limit and Cursor parameters pages by them: a limit out
// of 1..1000 or a cursor this API never handed out is 400 invalid_value naming it, and a page
// answers next_cursor. (The checks every such listing shares; tests/core/admin_api_test.cc
// has the rest.)
TEST_F(OpenApi, EveryListingDocumentedAsPagedTakesLimitAndCursor) {
  const std::vector<DocOperation> ops = load_operations();
  const auto takes = [](const DocOperation& o, std::string_view name) {
    return std::find(o.parameters.begin(), o.parameters.end(), name) != o.parameters.end();
  };
  std::set<std::string> paged;
  for (const DocOperation& o : ops) {
    EXPECT_EQ(takes(o, "Limit"), takes(o, "Cursor"))
        << o.method << " " << o.path << " documents one of Limit and Cursor without the other";
    if (!takes(o, "Limit")) continue;
    SCOPED_TRACE(o.method + " " + o.path);
    ASSERT_EQ(o.method, "GET");
    paged.insert(o.path);
    const std::string target = concrete_path(o.path);
    for (const char* query : {"?limit=0", "?limit=1001", "?limit=1&limit=2"}) {
      const std::optional<Response> r = admin("GET", target + query);
      ASSERT_TRUE(r) << query;
      EXPECT_EQ(r->status, 400) << query << "\n" << r->body;
      EXPECT_NE(r->body.find(R"("error":"invalid_value","field":"limit")"), std::string::npos)
          << query << "\n" << r->body;
    }
    const std::optional<Response> bad_cursor = admin("GET", target + "?cursor=not%20a%20cursor");
    ASSERT_TRUE(bad_cursor);
    EXPECT_EQ(bad_cursor->status, 400) << bad_cursor->body;
    EXPECT_NE(bad_cursor->body.find(R"("field":"cursor")"), std::string::npos) << bad_cursor->body;
    const std::optional<Response> page = admin("GET", target + "?limit=1&cursor=");
    ASSERT_TRUE(page);
    EXPECT_EQ(page->status, 200) << page->body;
    EXPECT_NE(page->body.find("\"next_cursor\":"), std::string::npos) << page->body;
  }
  EXPECT_EQ(paged, (std::set<std::string>{"/admin/keys", "/admin/users"}));
}

TEST_F(OpenApi, AnUndocumentedPathIsTheUnknownRoute404) {
  // The control for the 404 distinction above: a path no route serves.
  for (const char* path : {"/admin/keys/k000000000000/nothing", "/admin/nothing"}) {
    const std::optional<Response> r = admin("GET", path);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 404) << show(r);
    const std::string message = string_member(r->body, "message");
    EXPECT_TRUE(std::find(kUnknownRouteMessages.begin(), kUnknownRouteMessages.end(), message) !=
                kUnknownRouteMessages.end())
        << show(r);
  }
}

}  // namespace
}  // namespace keygate::integration
