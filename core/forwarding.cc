#include "core/forwarding.h"

#include <charconv>

#include "core/assert.h"
#include "core/key_extractor.h"
#include "core/response_writer.h"

namespace keygate {

namespace {

constexpr std::string_view kCrlf = "\r\n";

bool is_hop_by_hop_name(std::string_view name) noexcept {
  static constexpr std::string_view kNames[] = {
      "Connection", "Keep-Alive",        "Proxy-Connection", "TE",
      "Trailer",    "Transfer-Encoding", "Upgrade",
  };
  for (std::string_view n : kNames) {
    if (equals_ignore_case(name, n))
      return true;
  }
  return false;
}

bool is_ows(char c) noexcept { return c == ' ' || c == '\t'; }

// Does any Connection header list `name` among its comma-separated options?
// Rescans the headers for every candidate instead of collecting the options
// first: both lists are bounded by header_count_max, and Connection headers are
// rare and short, so this stays cheap without any scratch memory.
bool named_by_connection(std::span<const HttpHeader> headers,
                         std::string_view name) noexcept {
  for (const HttpHeader &h : headers) {
    if (!equals_ignore_case(h.name, "Connection"))
      continue;
    std::string_view list = h.value;
    while (!list.empty()) {
      const size_t comma = list.find(',');
      std::string_view option = list.substr(0, comma);
      list = comma == std::string_view::npos ? std::string_view()
                                             : list.substr(comma + 1);
      while (!option.empty() && is_ows(option.front()))
        option.remove_prefix(1);
      while (!option.empty() && is_ows(option.back()))
        option.remove_suffix(1);
      if (equals_ignore_case(option, name))
        return true;
    }
  }
  return false;
}

bool is_hop_by_hop(std::span<const HttpHeader> headers,
                   std::string_view name) noexcept {
  return is_hop_by_hop_name(name) || named_by_connection(headers, name);
}

void append_header(std::string &out, std::string_view name,
                   std::string_view value) noexcept {
  out.append(name);
  out.append(": ");
  out.append(value);
  out.append(kCrlf);
}

void append_decimal(std::string &out, uint64_t n) noexcept {
  char digits[24];
  const auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), n);
  KEYGATE_ASSERT(ec == std::errc());
  out.append(digits, static_cast<size_t>(end - digits));
}

// X-Forwarded-For / X-Forwarded-Proto: the client's values, then ours, as one
// header.
void append_forwarded(std::string &out, std::span<const HttpHeader> headers,
                      std::string_view name, std::string_view ours) noexcept {
  out.append(name);
  out.append(": ");
  // A client that lists the header in Connection asked for it not to travel
  // further.
  if (named_by_connection(headers, name))
    headers = {};
  for (const HttpHeader &h : headers) {
    if (h.value.empty() || !equals_ignore_case(h.name, name))
      continue;
    out.append(h.value);
    out.append(", ");
  }
  out.append(ours);
  out.append(kCrlf);
}

void append_framing(std::string &out, BodyFraming framing,
                    uint64_t content_length) noexcept {
  switch (framing) {
  case BodyFraming::kContentLength:
    out.append("Content-Length: ");
    append_decimal(out, content_length);
    out.append(kCrlf);
    break;
  case BodyFraming::kChunked:
    out.append("Transfer-Encoding: chunked\r\n");
    break;
  case BodyFraming::kNone:
  case BodyFraming::kUntilClose:
    break;
  }
}

} // namespace

void append_target_without_key(std::string_view target,
                               std::string &out) noexcept {
  const size_t question = target.find('?');
  out.append(target.substr(0, question));
  if (question == std::string_view::npos)
    return;
  std::string_view query = target.substr(question + 1);
  // Kept pairs are re-joined with '&', which reproduces the input exactly when
  // nothing is removed; the '?' is written only once something is kept.
  bool first = true;
  while (true) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    if (!is_key_param_name(pair.substr(0, pair.find('=')))) {
      out.push_back(first ? '?' : '&');
      out.append(pair);
      first = false;
    }
    if (amp == std::string_view::npos)
      break;
    query.remove_prefix(amp + 1);
  }
  // Only empty pairs kept ("?key=x&" leaves ""): the query is empty, so no '?'.
  if (!first && out.back() == '?')
    out.pop_back();
}

size_t write_upstream_request_head(const HttpRequest &request,
                                   const ForwardTarget &id,
                                   std::string_view client_ip,
                                   BodyFraming framing, uint64_t content_length,
                                   std::string &out,
                                   std::string_view host_if_missing) noexcept {
  KEYGATE_ASSERT(framing != BodyFraming::kUntilClose);
  out.append(request.method);
  out.push_back(' ');
  append_target_without_key(request.target, out);
  out.append(" HTTP/1.1\r\n");

  size_t host_at = 0;
  bool has_host = false;
  (void)request.header("Host", &has_host);
  if (!host_if_missing.empty() && !has_host) {
    out.append("Host: ");
    host_at = out.size();
    out.append(host_if_missing);
    out.append(kCrlf);
  }

  for (const HttpHeader &h : request.headers) {
    const std::string_view name = h.name;
    if (header_name_is_like(name, "X-ApiKey") ||
        equals_ignore_case(name, "Content-Length") ||
        equals_ignore_case(name, "Expect") ||
        header_name_is_like(name, "X-Forwarded-For") ||
        header_name_is_like(name, "X-Forwarded-Proto") ||
        header_name_starts_like(name, "X-Keygate-")) {
      continue;
    }
    if (!equals_ignore_case(name, "Host") &&
        is_hop_by_hop(request.headers, name))
      continue;
    append_header(out, name, h.value);
  }

  append_header(out, "X-Keygate-Key-Id", id.key_id);
  append_header(out, "X-Keygate-Api", id.api);
  if (!id.user.empty())
    append_header(out, "X-Keygate-User", id.user);
  append_forwarded(out, request.headers, "X-Forwarded-For", client_ip);
  append_forwarded(out, request.headers, "X-Forwarded-Proto", "http");
  append_framing(out, framing, content_length);
  out.append(kCrlf);
  return host_at;
}

namespace {

// RFC 9112 4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ). llhttp takes any byte but CR
// and LF there, NUL and the other control characters included.
bool is_valid_reason(std::string_view reason) noexcept {
  for (const char ch : reason) {
    const auto b = static_cast<unsigned char>(ch);
    if ((b < 0x20 && b != '\t') || b == 0x7f)
      return false;
  }
  return true;
}

} // namespace

void write_client_response_head(const ResponseHead &head, BodyFraming framing,
                                uint64_t content_length, bool keep_alive,
                                bool http10_client, std::string &out,
                                std::string_view date) noexcept {
  KEYGATE_ASSERT(head.status >= 100 && head.status <= 999);
  KEYGATE_ASSERT(framing != BodyFraming::kUntilClose || !keep_alive);
  out.append("HTTP/1.1 ");
  append_decimal(out, static_cast<uint64_t>(head.status));
  out.push_back(' ');
  if (is_valid_reason(head.reason)) {
    out.append(head.reason);
  } else if (const std::string_view standard = reason_phrase(head.status);
             standard != "Unknown") {
    out.append(standard);
  }
  out.append(kCrlf);

  bool has_date = false;
  for (const HttpHeader &h : head.headers) {
    if (equals_ignore_case(h.name, "Content-Length") ||
        is_hop_by_hop(head.headers, h.name)) {
      continue;
    }
    has_date = has_date || equals_ignore_case(h.name, "Date");
    append_header(out, h.name, h.value);
  }
  if (!has_date && !date.empty() && head.status >= 200)
    append_header(out, "Date", date);

  append_framing(out, framing, content_length);
  if (!keep_alive) {
    out.append("Connection: close\r\n");
  } else if (http10_client) {
    out.append("Connection: keep-alive\r\n");
  }
  out.append(kCrlf);
}

namespace {

// Calls `f` with each non-empty element of a Transfer-Encoding list, its OWS trimmed.
template <typename F>
void for_each_coding(std::string_view list, F&& f) noexcept {
  while (!list.empty()) {
    const size_t comma = list.find(',');
    std::string_view coding = list.substr(0, comma);
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    while (!coding.empty() && is_ows(coding.front())) coding.remove_prefix(1);
    while (!coding.empty() && is_ows(coding.back())) coding.remove_suffix(1);
    if (!coding.empty()) f(coding);
  }
}

}  // namespace

bool only_chunked_coding(std::string_view transfer_encoding) noexcept {
  bool only = true;
  for_each_coding(transfer_encoding, [&](std::string_view coding) noexcept {
    if (!equals_ignore_case(coding, "chunked")) only = false;
  });
  return only;
}

size_t chunked_codings(std::string_view transfer_encoding) noexcept {
  size_t n = 0;
  for_each_coding(transfer_encoding, [&](std::string_view coding) noexcept {
    if (equals_ignore_case(coding, "chunked")) ++n;
  });
  return n;
}

void append_chunk(std::string_view data, std::string& out) noexcept {
  if (data.empty()) return;
  char size_line[20];
  size_t n = sizeof(size_line);
  size_line[--n] = '\n';
  size_line[--n] = '\r';
  size_t v = data.size();
  do {
    size_line[--n] = kHexDigits[v & 15];
    v >>= 4;
  } while (v != 0);
  out.append(size_line + n, sizeof(size_line) - n);
  out.append(data);
  out.append("\r\n", 2);
}

} // namespace keygate
