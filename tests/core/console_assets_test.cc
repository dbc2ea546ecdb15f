#include "core/console_assets.h"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace keygate {
namespace {

std::string_view body_of(std::string_view path) {
  const ConsoleAsset* asset = find_console_asset(path);
  EXPECT_NE(asset, nullptr) << path;
  return asset == nullptr ? std::string_view() : asset->body;
}

TEST(ConsoleAssets, ThePageComesFirstAndEveryFileHasATypeWithCharsetAndBytes) {
  ASSERT_EQ(console_assets().size(), 3u);
  EXPECT_EQ(console_assets()[0].path, "/console");
  EXPECT_EQ(console_assets()[0].content_type, "text/html; charset=utf-8");
  EXPECT_EQ(find_console_asset("/console/app.js")->content_type, "text/javascript; charset=utf-8");
  EXPECT_EQ(find_console_asset("/console/app.css")->content_type, "text/css; charset=utf-8");
  for (const ConsoleAsset& asset : console_assets()) {
    EXPECT_TRUE(is_console_path(asset.path)) << asset.path;
    EXPECT_FALSE(asset.body.empty()) << asset.path;
    EXPECT_EQ(asset.body.find('\0'), std::string_view::npos) << asset.path << ": text files";
  }
  EXPECT_TRUE(body_of("/console").starts_with("<!doctype html>"));
}

TEST(ConsoleAssets, FilesAreFoundByTheirExactPathOnly) {
  for (const char* path : {"/console/", "/console/index.html", "/console/app.js/", "/consoleapp.js",
                           "/Console", "/console/APP.JS", "/console/app", ""}) {
    EXPECT_EQ(find_console_asset(path), nullptr) << path;
  }
}

TEST(ConsoleAssets, TheConsolesPathsAreItsRootAndWhatIsUnderIt) {
  for (const char* path : {"/console", "/console/", "/console/x", "/console/app.js/x"}) {
    EXPECT_TRUE(is_console_path(path)) << path;
  }
  for (const char* path : {"/consoles", "/console.js", "/admin/console", "/", "", "/Console"}) {
    EXPECT_FALSE(is_console_path(path)) << path;
  }
}

bool is_lower_letter(char c) { return c >= 'a' && c <= 'z'; }

// The quoted values of every ` NAME="..."` attribute in `html`.
std::vector<std::string> attribute_values(std::string_view html, std::string_view name) {
  std::vector<std::string> out;
  const std::string needle = " " + std::string(name) + "=\"";
  for (size_t at = html.find(needle); at != std::string_view::npos; at = html.find(needle, at)) {
    at += needle.size();
    out.emplace_back(html.substr(at, html.find('"', at) - at));
  }
  return out;
}

// The CSP forbids inline script and style; a page that relied on them would break silently in
// the browser, so the page is checked to load everything from its own files.
TEST(ConsoleAssets, ThePageLoadsItsScriptAndStyleFromItsOwnFilesOnly) {
  const std::string_view page = body_of("/console");
  EXPECT_NE(page.find("<script type=\"module\" src=\"/console/app.js\"></script>"),
            std::string_view::npos);
  EXPECT_NE(page.find("<link rel=\"stylesheet\" href=\"/console/app.css\">"),
            std::string_view::npos);
  EXPECT_EQ(page.find("<style"), std::string_view::npos);
  EXPECT_EQ(page.find(" style="), std::string_view::npos) << "inline style attribute";
  EXPECT_EQ(page.find("javascript:"), std::string_view::npos);
  // No inline event handler: no attribute named on... (" onclick=").
  for (size_t at = page.find(" on"); at != std::string_view::npos; at = page.find(" on", at + 1)) {
    size_t end = at + 3;
    while (end < page.size() && is_lower_letter(page[end])) ++end;
    EXPECT_FALSE(end > at + 3 && end < page.size() && page[end] == '=')
        << "inline event handler: " << page.substr(at, end - at);
  }
  // Every <script> has a src, and every src and href names a file the console serves.
  int scripts = 0;
  for (size_t at = page.find("<script"); at != std::string_view::npos;
       at = page.find("<script", at + 1)) {
    ++scripts;
    const std::string_view tag = page.substr(at, page.find('>', at) - at);
    EXPECT_NE(tag.find(" src=\""), std::string_view::npos) << tag;
  }
  EXPECT_EQ(scripts, 1);
  std::vector<std::string> references = attribute_values(page, "src");
  for (std::string& href : attribute_values(page, "href")) references.push_back(std::move(href));
  EXPECT_EQ(references.size(), 2u);
  for (const std::string& reference : references) {
    EXPECT_NE(find_console_asset(reference), nullptr) << reference;
  }
}

// What the console promises about the admin key and about rendering, checked on the script's
// text: no browser storage or cookie, and no API that parses a string as markup or code.
TEST(ConsoleAssets, TheScriptKeepsTheKeyInMemoryAndNeverParsesDataAsMarkup) {
  const std::string_view script = body_of("/console/app.js");
  for (const char* banned :
       {"localStorage", "sessionStorage", "indexedDB", "document.cookie", "innerHTML", "outerHTML",
        "insertAdjacentHTML", "document.write", "eval(", "new Function", "srcdoc", "DOMParser",
        "createContextualFragment", "http://", "https://"}) {
    EXPECT_EQ(script.find(banned), std::string_view::npos) << banned;
  }
  EXPECT_NE(script.find("'X-ApiKey': adminKey"), std::string_view::npos);
  EXPECT_NE(script.find("credentials: 'omit'"), std::string_view::npos);
  // Also the stylesheet fetches nothing from elsewhere.
  EXPECT_EQ(body_of("/console/app.css").find("url("), std::string_view::npos);
  EXPECT_EQ(body_of("/console/app.css").find("@import"), std::string_view::npos);
}

// The backups view: a tab of the page, and a view that lists the backups (with the one in
// progress, polling while there is one), makes one on request and explains the 409
// backups_disabled answer as the setting it is rather than showing it as a failure. (Its calls
// are checked against docs/openapi.yaml by tests/integration/openapi_test.cc, and its answers'
// shape by tests/integration/backup_test.cc.)
TEST(ConsoleAssets, TheConsoleHasABackupsViewThatListsMakesAndExplainsDisabledBackups) {
  const std::string_view page = body_of("/console");
  EXPECT_NE(page.find("<button type=\"button\" data-view=\"backups\">Backups</button>"),
            std::string_view::npos);
  const std::string_view script = body_of("/console/app.js");
  for (const char* part :
       {"backups: backupsView", "async function backupsView(view)", "api('GET', 'backups')",
        "api('POST', 'backups')", "button('Back up now'", "listing.in_progress",
        "err.code === 'backups_disabled'", "the [backup] table", "setTimeout("}) {
    EXPECT_NE(script.find(part), std::string_view::npos) << part;
  }
}

}  // namespace
}  // namespace keygate
