#include "core/response_writer.h"

#include <charconv>

#include "core/assert.h"

namespace keygate {

std::string_view reason_phrase(int status) noexcept {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

void ResponseWriter::start(int status) noexcept {
  KEYGATE_ASSERT(!started_);
  KEYGATE_ASSERT(status >= 100 && status <= 999);
  started_ = true;
  status_ = status;
  char code[3] = {static_cast<char>('0' + status / 100), static_cast<char>('0' + status / 10 % 10),
                  static_cast<char>('0' + status % 10)};
  out_.append("HTTP/1.1 ");
  out_.append(code, 3);
  out_.push_back(' ');
  out_.append(reason_phrase(status));
  out_.append("\r\nServer: keygate\r\nDate: ");
  out_.append(date_);
  out_.append("\r\n");
}

void ResponseWriter::header(std::string_view name, std::string_view value) noexcept {
  KEYGATE_ASSERT(started_ && !finished_);
  out_.append(name);
  out_.append(": ");
  out_.append(value);
  out_.append("\r\n");
}

void ResponseWriter::finish(std::string_view content_type, std::string_view body) noexcept {
  KEYGATE_ASSERT(started_ && !finished_);
  finished_ = true;
  if (!content_type.empty()) {
    out_.append("Content-Type: ");
    out_.append(content_type);
    out_.append("\r\n");
  }
  // 1xx, 204 and 304 carry no body and no Content-Length (RFC 9110 8.6).
  const bool bodyless_status = status_ < 200 || status_ == 204 || status_ == 304;
  if (!bodyless_status) {
    char digits[24];
    auto [end, ec] = std::to_chars(digits, digits + sizeof(digits), body.size());
    KEYGATE_ASSERT(ec == std::errc());
    out_.append("Content-Length: ");
    out_.append(digits, static_cast<size_t>(end - digits));
    out_.append("\r\n");
  }
  if (!keep_alive_) {
    out_.append("Connection: close\r\n");
  } else if (http10_) {
    out_.append("Connection: keep-alive\r\n");
  }
  out_.append("\r\n");
  if (!head_request_ && !bodyless_status) out_.append(body);
}

void ResponseWriter::error(int status, std::string_view code, std::string_view message) noexcept {
  start(status);
  finish_error(code, message);
}

void ResponseWriter::finish_error(std::string_view code, std::string_view message,
                                  bool field_null) noexcept {
  error_code_ = code;
  // Error bodies are small; build them on the stack so the error path does not allocate.
  char body[256];
  size_t n = 0;
  auto put = [&](std::string_view s) {
    size_t take = s.size() < sizeof(body) - n ? s.size() : sizeof(body) - n;
    for (size_t i = 0; i < take; ++i) body[n + i] = s[i];
    n += take;
  };
  put("{\"error\":\"");
  put(code);
  put(field_null ? "\",\"field\":null,\"message\":\"" : "\",\"message\":\"");
  put(message);
  put("\"}\n");
  finish("application/json", std::string_view(body, n));
}

std::string_view format_http_date(int64_t unix_seconds, char (&out)[29]) noexcept {
  static constexpr char kDays[7][4] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};
  static constexpr char kMonths[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  int64_t days = unix_seconds / 86400;
  int64_t secs = unix_seconds % 86400;
  const int weekday = static_cast<int>(days % 7);  // 1970-01-01 was a Thursday
  // Civil-from-days (Howard Hinnant's algorithm), valid for the proleptic Gregorian calendar.
  days += 719468;
  const int64_t era = days / 146097;
  const int64_t doe = days - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const int64_t mp = (5 * doy + 2) / 153;
  const int day = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
  const int month = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
  const int year = static_cast<int>(yoe + era * 400 + (month <= 2 ? 1 : 0));
  const int hour = static_cast<int>(secs / 3600);
  const int minute = static_cast<int>(secs / 60 % 60);
  const int second = static_cast<int>(secs % 60);
  auto two = [](char* p, int v) {
    p[0] = static_cast<char>('0' + v / 10);
    p[1] = static_cast<char>('0' + v % 10);
  };
  char* p = out;
  for (int i = 0; i < 3; ++i) *p++ = kDays[weekday][i];
  *p++ = ',';
  *p++ = ' ';
  two(p, day);
  p += 2;
  *p++ = ' ';
  for (int i = 0; i < 3; ++i) *p++ = kMonths[month - 1][i];
  *p++ = ' ';
  two(p, year / 100);
  two(p + 2, year % 100);
  p += 4;
  *p++ = ' ';
  two(p, hour);
  p[2] = ':';
  two(p + 3, minute);
  p[5] = ':';
  two(p + 6, second);
  p += 8;
  for (char c : std::string_view(" GMT")) *p++ = c;
  return std::string_view(out, 29);
}

}  // namespace keygate
