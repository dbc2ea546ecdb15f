#include "core/config.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace keygate {
namespace {

// Parses `text` expecting success.
Config parse_ok(std::string_view text) {
  Config config;
  std::string error;
  EXPECT_TRUE(parse_config(text, "test.toml", &config, &error)) << error;
  EXPECT_EQ(error, "");
  return config;
}

// Parses `text` expecting failure; returns the error line.
std::string parse_error(std::string_view text) {
  Config config;
  config.data_dir = "untouched";
  std::string error;
  EXPECT_FALSE(parse_config(text, "test.toml", &config, &error));
  EXPECT_EQ(config.data_dir, "untouched") << "a failed parse must not modify the output";
  return error;
}

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---------------------------------------------------------------------------------------------
// TOML file

TEST(Config, EmptyFileKeepsEveryDefault) {
  const Config c = parse_ok("");
  const Config defaults;
  const Limits limits;
  EXPECT_EQ(c.listen.host, "127.0.0.1");
  EXPECT_EQ(c.listen.port, 8080);
  EXPECT_FALSE(c.listen.ipv6);
  EXPECT_EQ(c.admin_listen.host, "127.0.0.1");
  EXPECT_EQ(c.admin_listen.port, 8081);
  EXPECT_EQ(c.data_dir, "./data");
  EXPECT_EQ(log_directory(c), "./data/logs");
  EXPECT_EQ(c.workers, 0u);
  EXPECT_EQ(c.worker_stall_timeout_ms, 5000u);
  EXPECT_EQ(c.limits.request_line_bytes_max, limits.request_line_bytes_max);
  EXPECT_EQ(c.limits.header_bytes_max, limits.header_bytes_max);
  EXPECT_EQ(c.limits.body_bytes_max, limits.body_bytes_max);
  EXPECT_EQ(c.limits.idle_timeout_ms, limits.idle_timeout_ms);
}

TEST(Config, ReadsEveryKey) {
  const Config c = parse_ok(R"(
# comment
[server]
listen = "0.0.0.0:9000"
admin_listen = "[::1]:9001"
data_dir = "/var/lib/keygate"
log_dir = "/var/log/keygate"
workers = 4
worker_stall_timeout_ms = 2000

[limits]
request_line_bytes_max = 4096
header_bytes_max = 8192
header_count_max = 50
body_bytes_max = 65536
connections_per_worker_max = 2000
pipeline_depth_max = 8
header_timeout_ms = 5000
body_timeout_ms = 6000
idle_timeout_ms = 7000
linger_timeout_ms = 0
drain_timeout_ms = 9000
)");
  EXPECT_EQ(c.listen.host, "0.0.0.0");
  EXPECT_EQ(c.listen.port, 9000);
  EXPECT_FALSE(c.listen.ipv6);
  EXPECT_EQ(c.admin_listen.host, "::1");
  EXPECT_EQ(c.admin_listen.port, 9001);
  EXPECT_TRUE(c.admin_listen.ipv6);
  EXPECT_EQ(c.data_dir, "/var/lib/keygate");
  EXPECT_EQ(c.log_dir, "/var/log/keygate");
  EXPECT_EQ(c.workers, 4u);
  EXPECT_EQ(c.worker_stall_timeout_ms, 2000u);
  EXPECT_EQ(c.limits.request_line_bytes_max, 4096u);
  EXPECT_EQ(c.limits.header_bytes_max, 8192u);
  EXPECT_EQ(c.limits.header_count_max, 50u);
  EXPECT_EQ(c.limits.body_bytes_max, 65536u);
  EXPECT_EQ(c.limits.connections_per_worker_max, 2000u);
  EXPECT_EQ(c.limits.pipeline_depth_max, 8u);
  EXPECT_EQ(c.limits.header_timeout_ms, 5000u);
  EXPECT_EQ(c.limits.body_timeout_ms, 6000u);
  EXPECT_EQ(c.limits.idle_timeout_ms, 7000u);
  EXPECT_EQ(c.limits.linger_timeout_ms, 0u);
  EXPECT_EQ(c.limits.drain_timeout_ms, 9000u);
}

TEST(Config, ReadsTheMinimumSendRateWithinItsRange) {
  EXPECT_EQ(Limits{}.send_rate_min_bytes_per_s, 240u);
  EXPECT_EQ(
      parse_ok("[limits]\nsend_rate_min_bytes_per_s = 0\n").limits.send_rate_min_bytes_per_s, 0u);
  EXPECT_EQ(parse_ok("[limits]\nsend_rate_min_bytes_per_s = 1073741824\n")
                .limits.send_rate_min_bytes_per_s,
            1u << 30);
  EXPECT_EQ(parse_error("[limits]\nsend_rate_min_bytes_per_s = 1073741825\n"),
            "test.toml:2:29: limits.send_rate_min_bytes_per_s: must be between 0 and "
            "1073741824");
}

TEST(Config, ReadsTheSendBufferSizeWithinItsRange) {
  EXPECT_EQ(Limits{}.send_buffer_bytes, 0u);  // the kernel's autotuning
  EXPECT_EQ(parse_ok("[limits]\nsend_buffer_bytes = 16384\n").limits.send_buffer_bytes, 16384u);
  EXPECT_EQ(parse_ok("[limits]\nsend_buffer_bytes = 1073741824\n").limits.send_buffer_bytes,
            1u << 30);
  EXPECT_EQ(parse_error("[limits]\nsend_buffer_bytes = 1073741825\n"),
            "test.toml:2:21: limits.send_buffer_bytes: must be between 0 and 1073741824");
}

TEST(Config, ReadsTheBodyMemoryBoundWithinItsRange) {
  EXPECT_EQ(Limits{}.body_memory_per_worker_max, uint64_t{64} << 20);
  EXPECT_EQ(parse_ok("[limits]\nbody_memory_per_worker_max = 0\n").limits.body_memory_per_worker_max,
            0u);
  EXPECT_EQ(parse_ok("[limits]\nbody_memory_per_worker_max = 1099511627776\n")
                .limits.body_memory_per_worker_max,
            uint64_t{1} << 40);
  EXPECT_EQ(parse_error("[limits]\nbody_memory_per_worker_max = 1099511627777\n"),
            "test.toml:2:30: limits.body_memory_per_worker_max: must be between 0 and "
            "1099511627776");
}

TEST(Config, BackupsAreOffByDefaultAndReadWithTheirRange) {
  const Config defaults = parse_ok("");
  EXPECT_EQ(defaults.backup_dir, "");
  EXPECT_EQ(defaults.backup_retention_count, 7u);
  const Config c = parse_ok("[backup]\ndir = \"backups\"\nretention_count = 0\n");
  EXPECT_EQ(c.backup_dir, "backups");
  EXPECT_EQ(c.backup_retention_count, 0u);
  EXPECT_EQ(parse_ok("[backup]\nretention_count = 10000\n").backup_retention_count, 10000u);
  EXPECT_EQ(parse_error("[backup]\nretention_count = 10001\n"),
            "test.toml:2:19: backup.retention_count: must be between 0 and 10000");
  EXPECT_EQ(parse_error("[backup]\ndir = \"\"\n"),
            "test.toml:2:7: backup.dir must not be empty (leave it out to disable backups)");
  EXPECT_EQ(parse_error("[backup]\nkept = 3\n"), "test.toml:2:8: unknown key 'backup.kept'");
  EXPECT_TRUE(contains(parse_error("backup = 3\n"), "backup: expected a table"));
}

TEST(Config, PartialTablesKeepOtherDefaults) {
  const Config c = parse_ok("[limits]\nbody_bytes_max = 0\n");
  EXPECT_EQ(c.limits.body_bytes_max, 0u);
  EXPECT_EQ(c.limits.header_count_max, Limits{}.header_count_max);
  EXPECT_EQ(c.listen.port, 8080);
}

TEST(Config, AcceptsLargestBodyLimit) {
  EXPECT_EQ(parse_ok("[limits]\nbody_bytes_max = 1073741824\n").limits.body_bytes_max,
            uint64_t{1} << 30);
}

TEST(Config, RejectsUnknownTopLevelTable) {
  const std::string error = parse_error("[serevr]\nlisten = \"127.0.0.1:1\"\n");
  EXPECT_TRUE(contains(error, "unknown key 'serevr'")) << error;
  EXPECT_EQ(error.rfind("test.toml:", 0), 0u) << error;
}

TEST(Config, RejectsUnknownKeyWithItsPosition) {
  const std::string error = parse_error("[server]\nworkers = 2\nlisten_addr = \"127.0.0.1:1\"\n");
  EXPECT_EQ(error, "test.toml:3:15: unknown key 'server.listen_addr'");
}

TEST(Config, RejectsUnknownLimit) {
  const std::string error = parse_error("[limits]\nbody_max = 5\n");
  EXPECT_TRUE(contains(error, "unknown key 'limits.body_max'")) << error;
}

TEST(Config, RejectsSyntaxErrorWithPosition) {
  const std::string error = parse_error("[server]\nworkers = = 3\n");
  EXPECT_EQ(error.rfind("test.toml:2:", 0), 0u) << error;
}

TEST(Config, RejectsServerThatIsNotATable) {
  EXPECT_TRUE(contains(parse_error("server = 5\n"), "server: expected a table"));
}

TEST(Config, RejectsLimitsThatIsNotATable) {
  EXPECT_TRUE(contains(parse_error("limits = \"big\"\n"), "limits: expected a table"));
}

TEST(Config, RejectsStringWhereIntegerExpected) {
  const std::string error = parse_error("[server]\nworkers = \"4\"\n");
  EXPECT_EQ(error, "test.toml:2:11: server.workers: expected an integer");
}

TEST(Config, RejectsFloatWhereIntegerExpected) {
  EXPECT_TRUE(contains(parse_error("[limits]\nheader_count_max = 10.0\n"),
                       "limits.header_count_max: expected an integer"));
}

TEST(Config, RejectsIntegerWhereStringExpected) {
  EXPECT_TRUE(
      contains(parse_error("[server]\ndata_dir = 5\n"), "server.data_dir: expected a string"));
}

TEST(Config, RejectsLimitBelowItsMinimum) {
  const std::string error = parse_error("[limits]\nheader_bytes_max = 255\n");
  EXPECT_EQ(error, "test.toml:2:20: limits.header_bytes_max: must be between 256 and 1048576");
}

TEST(Config, AcceptsLimitAtItsMinimum) {
  EXPECT_EQ(parse_ok("[limits]\nheader_bytes_max = 256\n").limits.header_bytes_max, 256u);
}

TEST(Config, RejectsLimitAboveItsMaximum) {
  EXPECT_TRUE(contains(parse_error("[limits]\nbody_bytes_max = 1073741825\n"),
                       "limits.body_bytes_max: must be between 0 and 1073741824"));
  EXPECT_TRUE(contains(parse_error("[server]\nworkers = 1025\n"),
                       "server.workers: must be between 0 and 1024"));
  // Near the 100 ms an idle worker may sleep in one pass, a stall would be a false alarm.
  EXPECT_TRUE(contains(parse_error("[server]\nworker_stall_timeout_ms = 249\n"),
                       "server.worker_stall_timeout_ms: must be between 250 and 600000"));
  EXPECT_TRUE(contains(parse_error("[server]\nworker_stall_timeout_ms = 600001\n"),
                       "server.worker_stall_timeout_ms: must be between 250 and 600000"));
}

TEST(Config, RejectsNegativeInteger) {
  EXPECT_TRUE(contains(parse_error("[limits]\nidle_timeout_ms = -1\n"),
                       "limits.idle_timeout_ms: must be between 1 and 4294967295"));
}

TEST(Config, RejectsZeroWherePositiveRequired) {
  EXPECT_TRUE(contains(parse_error("[limits]\nheader_count_max = 0\n"),
                       "limits.header_count_max: must be between 1 and 10000"));
}

TEST(Config, RejectsTimeoutThatOverflowsUint32) {
  EXPECT_TRUE(contains(parse_error("[limits]\nheader_timeout_ms = 4294967296\n"),
                       "limits.header_timeout_ms: must be between 1 and 4294967295"));
}

TEST(Config, RejectsMalformedListenAddressInFile) {
  const std::string error = parse_error("[server]\nlisten = \"localhost:80\"\n");
  EXPECT_TRUE(contains(error, "test.toml:2:")) << error;
  EXPECT_TRUE(contains(error, "server.listen: address must be a numeric IP")) << error;
}

TEST(Config, ReadsAdminHostsAsLowerCaseNames) {
  EXPECT_TRUE(parse_ok("").admin_hosts.empty());
  EXPECT_EQ(parse_ok("[admin]\nhosts = [\"KG-Admin.Internal\", \"admin\"]\n").admin_hosts,
            (std::vector<std::string>{"kg-admin.internal", "admin"}));
  EXPECT_EQ(parse_error("[admin]\nhosts = \"admin\"\n"),
            "test.toml:2:9: admin.hosts: expected an array of host names");
  EXPECT_EQ(parse_error("[admin]\nhosts = [7]\n"),
            "test.toml:2:10: admin.hosts: expected a host name string");
  for (const char* bad : {"", "admin:8081", "admin/x", "a b", ".admin", "admin."}) {
    const std::string error =
        parse_error(std::string("[admin]\nhosts = [\"") + bad + "\"]\n");
    EXPECT_NE(error.find("is not a host name"), std::string::npos) << bad << ": " << error;
  }
  std::string many = "[admin]\nhosts = [";
  for (int i = 0; i < 65; ++i) many += "\"h" + std::to_string(i) + "\",";
  EXPECT_EQ(parse_error(many + "]\n"), "test.toml:2:9: admin.hosts: at most 64 names");
}

TEST(Config, ReadsAdminConnectionsMaxWithinItsRange) {
  EXPECT_EQ(parse_ok("").admin_connections_max, 64u);
  EXPECT_EQ(parse_ok("[admin]\nconnections_max = 1\n").admin_connections_max, 1u);
  EXPECT_EQ(parse_ok("[admin]\nconnections_max = 100000\n").admin_connections_max, 100000u);
  EXPECT_EQ(parse_error("[admin]\nconnections_max = 0\n"),
            "test.toml:2:19: admin.connections_max: must be between 1 and 100000");
  EXPECT_EQ(parse_error("[admin]\nconnections_max = 100001\n"),
            "test.toml:2:19: admin.connections_max: must be between 1 and 100000");
  EXPECT_EQ(parse_error("[admin]\nconnections_max = -1\n"),
            "test.toml:2:19: admin.connections_max: must be between 1 and 100000");
  EXPECT_EQ(parse_error("[admin]\nconnections_max = \"64\"\n"),
            "test.toml:2:19: admin.connections_max: expected an integer");
}

TEST(Config, ReadsKeysAndCacheTables) {
  const Config c = parse_ok(
      "[keys]\nbody_inspect_bytes_max = 4096\nlast_used_flush_interval_ms = 1000\n"
      "[cache]\nmax_keys = 1000\nnegative_entries = 10\n");
  EXPECT_EQ(c.body_inspect_bytes_max, 4096u);
  EXPECT_EQ(c.last_used_flush_interval_ms, 1000u);
  EXPECT_EQ(c.cache_max_keys, 1000u);
  EXPECT_EQ(c.cache_negative_entries, 10u);
}

TEST(Config, KeysAndCacheDefaultsWhenAbsent) {
  const Config c = parse_ok("");
  const Config defaults;
  EXPECT_EQ(c.body_inspect_bytes_max, defaults.body_inspect_bytes_max);
  EXPECT_EQ(c.last_used_flush_interval_ms, 30000u);
  EXPECT_EQ(c.cache_max_keys, defaults.cache_max_keys);
  EXPECT_EQ(c.cache_negative_entries, defaults.cache_negative_entries);
  EXPECT_TRUE(c.apis.empty());
}

TEST(Config, RejectsALastUsedFlushIntervalOutOfRange) {
  EXPECT_EQ(parse_error("[keys]\nlast_used_flush_interval_ms = 99\n"),
            "test.toml:2:31: keys.last_used_flush_interval_ms: must be between 100 and 3600000");
  EXPECT_EQ(parse_error("[keys]\nlast_used_flush_interval_ms = 3600001\n"),
            "test.toml:2:31: keys.last_used_flush_interval_ms: must be between 100 and 3600000");
}

TEST(Config, RejectsOutOfRangeCacheSetting) {
  EXPECT_TRUE(contains(parse_error("[cache]\nnegative_entries = 16777217\n"),
                       "cache.negative_entries: must be between 0 and 16777216"));
}

TEST(Config, RejectsUnknownKeyInKeysTable) {
  EXPECT_TRUE(
      contains(parse_error("[keys]\nheader = \"x-api-key\"\n"), "unknown key 'keys.header'"));
}

TEST(Config, ReadsApis) {
  const Config c = parse_ok(R"(
[[apis]]
name = "orders"
routes = ["/orders", "/carts/"]

[[apis]]
name = "billing"
mode = "auth-check"
routes = ["/billing"]
)");
  ASSERT_EQ(c.apis.size(), 2u);
  EXPECT_EQ(c.apis[0].name, "orders");
  EXPECT_EQ(c.apis[0].routes, (std::vector<std::string>{"/orders", "/carts/"}));
  EXPECT_EQ(c.apis[1].name, "billing");
  EXPECT_EQ(c.apis[1].routes, std::vector<std::string>{"/billing"});
  std::string error;
  EXPECT_TRUE(validate_config(c, &error)) << error;
}

TEST(Config, RejectsApisThatAreNotAnArrayOfTables) {
  EXPECT_TRUE(contains(parse_error("[apis]\nname = \"x\"\n"),
                       "apis: expected an array of tables ([[apis]])"));
  EXPECT_TRUE(contains(parse_error("apis = [1]\n"), "apis: expected a table"));
}

TEST(Config, RejectsApiWithoutName) {
  EXPECT_TRUE(
      contains(parse_error("[[apis]]\nroutes = [\"/x\"]\n"), "apis: every API needs a name"));
}

TEST(Config, RejectsUnknownApiMode) {
  const std::string error =
      parse_error("[[apis]]\nname = \"a\"\nmode = \"tunnel\"\nroutes = [\"/a\"]\n");
  EXPECT_TRUE(contains(error, "apis.mode: unknown mode 'tunnel' (supported: auth-check, proxy)"))
      << error;
}

TEST(Config, RejectsAnEmptyApiModeNamingTheSupportedOnes) {
  const std::string error = parse_error("[[apis]]\nname = \"a\"\nmode = \"\"\nroutes = [\"/a\"]\n");
  EXPECT_EQ(error, "test.toml:3:8: apis.mode: unknown mode '' (supported: auth-check, proxy)");
}

TEST(Config, ReadsUpstreamsAndTheirTimeouts) {
  const Config c = parse_ok(
      "[[apis]]\nname = \"a\"\nroutes = [\"/a\"]\n"
      "upstreams = [\"127.0.0.1:9001\", \"[::1]:9002\"]\n"
      "connect_timeout_ms = 250\nresponse_timeout_ms = 4000\n"
      "[[apis]]\nname = \"b\"\nroutes = [\"/b\"]\n");
  ASSERT_EQ(c.apis.size(), 2u);
  EXPECT_EQ(c.apis[0].upstreams, (std::vector<std::string>{"127.0.0.1:9001", "[::1]:9002"}));
  EXPECT_EQ(c.apis[0].connect_timeout_ms, 250u);
  EXPECT_EQ(c.apis[0].response_timeout_ms, 4000u);
  EXPECT_TRUE(c.apis[1].upstreams.empty());
  EXPECT_EQ(c.apis[1].connect_timeout_ms, 1000u);
  EXPECT_EQ(c.apis[1].response_timeout_ms, 30000u);
}

TEST(Config, RejectsBadUpstreams) {
  const std::string base = "[[apis]]\nname = \"a\"\nroutes = [\"/a\"]\n";
  EXPECT_TRUE(contains(parse_error(base + "upstreams = \"127.0.0.1:1\"\n"),
                       "apis.a.upstreams: expected an array"));
  EXPECT_TRUE(contains(parse_error(base + "upstreams = [\"localhost:80\"]\n"),
                       "apis.a.upstreams: expected \"IP:port\""));
  EXPECT_TRUE(contains(parse_error(base + "upstreams = [\"127.0.0.1:0\"]\n"),
                       "apis.a.upstreams: expected \"IP:port\""));
  EXPECT_TRUE(contains(parse_error(base + "upstreams = [5]\n"), "apis.a.upstreams"));
  EXPECT_TRUE(contains(parse_error(base + "mode = \"proxy\"\n"), "mode proxy needs upstreams"));
  EXPECT_TRUE(contains(parse_error(base + "mode = \"auth-check\"\nupstreams = [\"127.0.0.1:1\"]\n"),
                       "mode auth-check cannot have upstreams"));
  EXPECT_TRUE(contains(parse_error(base + "connect_timeout_ms = 0\n"), "connect_timeout_ms"));
}

TEST(Config, RejectsAnUpstreamListedTwiceInAnySpelling) {
  const std::string base = "[[apis]]\nname = \"a\"\nroutes = [\"/a\"]\n";
  EXPECT_EQ(parse_error(base + "upstreams = [\"127.0.0.1:9001\", \"127.0.0.1:9001\"]\n"),
            "test.toml:4:32: apis.a.upstreams: 127.0.0.1:9001 is listed twice");
  EXPECT_TRUE(contains(parse_error(base + "upstreams = [\"[::1]:9001\", \"[0::1]:09001\"]\n"),
                       "apis.a.upstreams: [0::1]:9001 is listed twice"));
  // Another port, or the other API's server, is another upstream.
  const Config c =
      parse_ok(base + "upstreams = [\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"[::1]:9001\"]\n" +
               "[[apis]]\nname = \"b\"\nroutes = [\"/b\"]\nupstreams = [\"127.0.0.1:9001\"]\n");
  EXPECT_EQ(c.apis[0].upstreams.size(), 3u);
}

TEST(Config, RejectsTheUnspecifiedAddressAsAnUpstream) {
  const std::string base = "[[apis]]\nname = \"a\"\nroutes = [\"/a\"]\n";
  EXPECT_EQ(parse_error(base + "upstreams = [\"0.0.0.0:9001\"]\n"),
            "test.toml:4:14: apis.a.upstreams: 0.0.0.0:9001 is the unspecified address, not a "
            "server: name one (127.0.0.1, [::1], ...)");
  for (std::string_view up : {"[::]:9001", "[0:0::0]:9001", "[::ffff:0.0.0.0]:9001"}) {
    EXPECT_TRUE(contains(parse_error(base + "upstreams = [\"" + std::string(up) + "\"]\n"),
                         "is the unspecified address"))
        << up;
  }
  EXPECT_EQ(parse_ok(base + "upstreams = [\"[::ffff:127.0.0.1]:9001\", \"127.0.0.2:9001\"]\n")
                .apis[0]
                .upstreams.size(),
            2u);
}

TEST(Config, ReadsLogTableAndProxyLimits) {
  const Config c = parse_ok(
      "[log]\nenabled = false\nring_bytes_per_worker = 65536\nsegment_bytes_max = 1048576\n"
      "retention_bytes = 10485760\ncapture_bytes_max = 100\nflush_interval_ms = 5\n"
      "direct_io = false\nbacklog_bytes_max = 0\n"
      "[limits]\nproxy_body_bytes_max = 5\nupstream_idle_connections_max = 3\n"
      "upstream_fail_timeout_ms = 7\n");
  EXPECT_FALSE(c.log_enabled);
  EXPECT_EQ(c.log_ring_bytes_per_worker, 65536u);
  EXPECT_EQ(c.log_segment_bytes_max, 1048576u);
  EXPECT_EQ(c.log_retention_bytes, 10485760u);
  EXPECT_EQ(c.log_capture_bytes_max, 100u);
  EXPECT_EQ(c.log_flush_interval_ms, 5u);
  EXPECT_FALSE(c.log_direct_io);
  EXPECT_EQ(c.log_backlog_bytes_max, 0u);
  EXPECT_EQ(c.limits.proxy_body_bytes_max, 5u);
  EXPECT_EQ(c.limits.upstream_idle_connections_max, 3u);
  EXPECT_EQ(c.limits.upstream_fail_timeout_ms, 7u);
  EXPECT_TRUE(contains(parse_error("[log]\nenabled = 1\n"), "log.enabled: expected true or false"));
  EXPECT_TRUE(
      contains(parse_error("[log]\ndirect_io = 1\n"), "log.direct_io: expected true or false"));
  EXPECT_TRUE(contains(parse_error("[log]\nring_bytes_per_worker = 10\n"),
                       "log.ring_bytes_per_worker: must be between"));
  EXPECT_TRUE(contains(parse_error("[log]\nrotate = 1\n"), "unknown key 'log.rotate'"));
  const Config d = parse_ok("");
  EXPECT_TRUE(d.log_enabled);
  EXPECT_TRUE(d.log_direct_io);
  EXPECT_EQ(d.log_backlog_bytes_max, 64u << 20);
  EXPECT_TRUE(contains(parse_error("[log]\nbacklog_bytes_max = -1\n"),
                       "log.backlog_bytes_max: must be between"));
  // Smaller than one ring (default 4 MiB): the relief thread could never move a ring into it.
  EXPECT_TRUE(contains(parse_error("[log]\nbacklog_bytes_max = 1048576\n"),
                       "log.backlog_bytes_max: must be 0 (no backlog) or at least "
                       "log.ring_bytes_per_worker (4194304)"));
  EXPECT_EQ(parse_ok("[log]\nring_bytes_per_worker = 1048576\nbacklog_bytes_max = 1048576\n")
                .log_backlog_bytes_max,
            1048576u);
  EXPECT_EQ(d.log_capture_bytes_max, 65536u);
}

TEST(Config, RejectsApiRoutesThatAreNotAListOfStrings) {
  EXPECT_TRUE(contains(parse_error("[[apis]]\nname = \"a\"\n"),
                       "apis.a.routes: expected an array of path prefixes"));
  EXPECT_TRUE(contains(parse_error("[[apis]]\nname = \"a\"\nroutes = \"/a\"\n"),
                       "apis.a.routes: expected an array of path prefixes"));
  EXPECT_TRUE(contains(parse_error("[[apis]]\nname = \"a\"\nroutes = [\"/a\", 5]\n"),
                       "apis.a.routes: expected strings"));
}

TEST(Config, RejectsUnknownKeyInApi) {
  EXPECT_TRUE(contains(parse_error("[[apis]]\nname = \"a\"\nroutes = [\"/a\"]\nupstream = 1\n"),
                       "unknown key 'apis.upstream'"));
}

TEST(Config, RejectsInvalidApisWithThePositionOfTheOffendingValue) {
  // ApiRegistry's rules, reported at the value they refuse: the name, the routes list, or the
  // route itself.
  struct Case {
    std::string_view text;
    std::string_view error;
  };
  for (const Case& c : std::vector<Case>{
           {"[[apis]]\nname = \"a\"\nroutes = [\"/a\"]\n"
            "[[apis]]\nname = \"a\"\nroutes = [\"/b\"]\n",
            "test.toml:5:8: apis: api \"a\": duplicate name"},
           {"[[apis]]\nname = \"admin\"\nroutes = [\"/x\"]\n",
            "test.toml:2:8: apis: api \"admin\": the name is reserved"},
           {"[[apis]]\nname = \"\"\nroutes = [\"/x\"]\n",
            "test.toml:2:8: apis: api #1: name is empty"},
           {"[[apis]]\nname = \"a\"\nroutes = []\n",
            "test.toml:3:10: apis: api \"a\": has no routes"},
           {"[[apis]]\nname = \"a\"\nroutes = [\"/ok\", \"no-slash\"]\n",
            "test.toml:3:18: apis: api \"a\": route \"no-slash\" must be a normalized path"},
           {"[[apis]]\nname = \"a\"\nroutes = [\"/x/../admin\"]\n",
            "test.toml:3:11: apis: api \"a\": route \"/x/../admin\" must be a normalized path"},
           // The data port's parser refuses raw non-ASCII bytes and spaces in a request target:
           // such a route could never match (a client sends "/caf%C3%A9").
           {"[[apis]]\nname = \"a\"\nroutes = [\"/caf\xc3\xa9\"]\n",
            "test.toml:3:11: apis: api \"a\": route \"/caf\xc3\xa9\" must be a normalized path"},
           {"[[apis]]\nname = \"a\"\nroutes = [\"/ok\", \"/a b\"]\n",
            "test.toml:3:18: apis: api \"a\": route \"/a b\" must be a normalized path"},
           {"[[apis]]\nname = \"a\"\nroutes = [\"/a\"]\n\n[[apis]]\nname = \"b\"\n"
            "routes = [\"/b\",\n  \"/a\"]\n",
            "test.toml:8:3: apis: api \"b\": route \"/a\" is already used by api \"a\""},
       }) {
    SCOPED_TRACE(std::string(c.text));
    EXPECT_EQ(parse_error(c.text).rfind(c.error, 0), 0u) << parse_error(c.text);
  }
  std::string many;
  for (size_t i = 0; i <= kApisMax; ++i) {
    many += "[[apis]]\nname = \"a" + std::to_string(i) + "\"\nroutes = [\"/a" + std::to_string(i) +
            "\"]\n";
  }
  const std::string error = parse_error(many);
  EXPECT_EQ(error.rfind("test.toml:1:1: apis: too many apis", 0), 0u) << error;
}

// The data port answers /healthz and /_keygate/auth[/...] before routing (core/auth_handler.cc):
// a route naming one of them could never receive that path.
TEST(Config, RejectsRoutesThatOnlyKeygatesOwnPathsCouldMatch) {
  const std::string base = "[[apis]]\nname = \"a\"\nroutes = [\"/a\", ";
  EXPECT_EQ(parse_error(base + "\"/healthz\"]\n"),
            "test.toml:3:17: apis: api \"a\": route \"/healthz\" is reserved: keygate answers "
            "/healthz itself, so the API would never receive it");
  for (std::string_view route : {"/_keygate/auth", "/_keygate/auth/", "/_keygate/auth/orders"}) {
    EXPECT_EQ(parse_error(base + "\"" + std::string(route) + "\"]\n"),
              "test.toml:3:17: apis: api \"a\": route \"" + std::string(route) +
                  "\" is reserved: keygate answers /_keygate/auth and every path under it "
                  "itself, so the API would never receive them");
  }
  // Routes some of whose paths reach the API ("/healthz/x", "/_keygate/other") are accepted.
  for (std::string_view route : {"/healthz/", "/healthz/x", "/healthzx", "/_keygate", "/_keygate/",
                                 "/_keygate/authx", "/_keygate/other", "/"}) {
    const Config c = parse_ok(base + "\"" + std::string(route) + "\"]\n");
    std::string error;
    EXPECT_TRUE(validate_config(c, &error)) << route << ": " << error;
  }
}

TEST(Config, ValidationRejectsInvalidApisOfAConfigNotReadFromAFile) {
  Config c;
  c.apis.emplace_back("admin", std::vector<std::string>{"/x"});
  std::string error;
  EXPECT_FALSE(validate_config(c, &error));
  EXPECT_EQ(error.rfind("apis: api \"admin\": the name is reserved", 0), 0u) << error;
}

TEST(Config, RejectsAnEmptyDataDirWithItsPosition) {
  EXPECT_EQ(parse_error("[server]\ndata_dir = \"\"\n"),
            "test.toml:2:12: server.data_dir must not be empty");
}

// ---------------------------------------------------------------------------------------------
// Listen addresses

// Found with tests/fuzz/config_fuzz.cc: messages quote the file's text, and a TOML string can
// hold any control character ("\n", "\u001b"), so a bad name, route or address split the one
// line keygate prints about why it does not start (or drove the terminal showing it). Control
// characters are quoted as \xHH now, in every message that quotes configuration text.
TEST(Config, ErrorsStayOneLineWhateverTheFileQuotes) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[server]\nlisten = \"a\\nb:1\"\n", "got 'a\\x0ab'"},
      {"[server]\nadmin_listen = \"[\\u001b[2J]:1\"\n", "got '\\x1b[2J'"},
      {"[[apis]]\nname = \"x\\ny\"\nroutes = [\"/x\"]\n", "api \"x\\x0ay\""},
      {"[[apis]]\nname = \"x\"\nroutes = [\"/a\\r\\nb\"]\n", "route \"/a\\x0d\\x0ab\""},
      {"[[apis]]\nname = \"x\"\nmode = \"m\\n\"\nroutes = [\"/x\"]\n", "mode 'm\\x0a'"},
      {"[server]\n\"a\\tb\" = 1\n", "unknown key 'server.a\\x09b'"},
      {"[[apis]]\nname = \"x\\n\"\nupstreams = [\"1:2:3\"]\nroutes = [\"/x\"]\n",
       "apis.x\\x0a.upstreams"},
  };
  for (const auto& [text, quoted] : cases) {
    const std::string error = parse_error(text);
    EXPECT_TRUE(contains(error, quoted)) << error;
    for (const char c : error) {
      EXPECT_FALSE(static_cast<unsigned char>(c) < 0x20 || c == 0x7f) << text << ": " << error;
    }
  }
  ListenAddress address;
  std::string error;
  EXPECT_FALSE(parse_listen_address("a\nb:1", &address, &error));
  EXPECT_EQ(error, "address must be a numeric IPv4 literal, got 'a\\x0ab'");
  ApiRegistry registry;
  EXPECT_FALSE(registry.init({{"x", {"/a\nb"}}}, &error));
  EXPECT_TRUE(contains(error, "route \"/a\\x0ab\"")) << error;
}

// Found with tests/fuzz/config_fuzz.cc (UBSan: "execution reached an unreachable program
// point" in toml++'s unicode_autogenerated.h): toml++ 3.3.0 asked whether a non-ASCII character
// was whitespace and reached __builtin_unreachable() for most of them, in a valid file (a
// multi-line string's line-ending backslash followed by "§") as in invalid ones.
TEST(Config, NonAsciiCharactersWhereTomlLooksForWhitespaceAreNotUndefinedBehaviour) {
  EXPECT_EQ(parse_ok("[server]\ndata_dir = \"\"\"\\\n  \xc2\xa7x\"\"\"\n").data_dir, "\xc2\xa7x");
  EXPECT_EQ(parse_ok("[server]\ndata_dir = \"\"\"\\\n\xef\xbb\xb9\"\"\"\n").data_dir, "\xef\xbb\xb9");
  EXPECT_FALSE(parse_error("[server]\nworkers = 1\xc2\xa7\n").empty());
  EXPECT_FALSE(parse_error("[[\xef\xbb\xb9s]]\n").empty());
  EXPECT_FALSE(parse_error("\xe2\xb1\xb2 = 1\n").empty());
  // Whitespace outside ASCII is still whitespace to it (U+3000 here): the file is refused as
  // before, for the key that follows.
  EXPECT_FALSE(parse_error("\xe3\x80\x80x = 1\n").empty());
}

TEST(Config, ParsesIpv4ListenAddress) {
  ListenAddress a;
  std::string error;
  ASSERT_TRUE(parse_listen_address("10.1.2.3:443", &a, &error)) << error;
  EXPECT_EQ(a.host, "10.1.2.3");
  EXPECT_EQ(a.port, 443);
  EXPECT_FALSE(a.ipv6);
  EXPECT_EQ(a.to_string(), "10.1.2.3:443");
}

TEST(Config, ParsesBracketedIpv6ListenAddress) {
  ListenAddress a;
  std::string error;
  ASSERT_TRUE(parse_listen_address("[2001:db8::1]:8443", &a, &error)) << error;
  EXPECT_EQ(a.host, "2001:db8::1");
  EXPECT_EQ(a.port, 8443);
  EXPECT_TRUE(a.ipv6);
  EXPECT_EQ(a.to_string(), "[2001:db8::1]:8443");
}

TEST(Config, AcceptsListenPortZeroAndPortMax) {
  ListenAddress a;
  std::string error;
  ASSERT_TRUE(parse_listen_address("127.0.0.1:0", &a, &error)) << error;
  EXPECT_EQ(a.port, 0);
  ASSERT_TRUE(parse_listen_address("[::]:65535", &a, &error)) << error;
  EXPECT_EQ(a.port, 65535);
  EXPECT_EQ(a.host, "::");
}

TEST(Config, RejectsMalformedListenAddresses) {
  const std::vector<std::string_view> bad = {
      "",                   // nothing
      "127.0.0.1",          // no port
      ":8080",              // no host
      "127.0.0.1:",         // empty port
      "127.0.0.1:65536",    // port out of range
      "127.0.0.1:-1",       // negative port
      "127.0.0.1:+80",      // signed port
      "127.0.0.1:80x",      // trailing junk
      "127.0.0.1: 80",      // space
      "localhost:80",       // names are not resolved
      "::1:80",             // IPv6 without brackets
      "[::1]80",            // no colon after bracket
      "[::1]:",             // bracketed, empty port
      "[::1",               // unclosed bracket
      "[]:80",              // empty IPv6 host
      "[fe80::1%eth0]:80",  // zone ids are not numeric
  };
  for (std::string_view text : bad) {
    SCOPED_TRACE(std::string(text));
    ListenAddress a{"keep", 7, false};
    std::string error;
    EXPECT_FALSE(parse_listen_address(text, &a, &error));
    EXPECT_FALSE(error.empty());
    EXPECT_EQ(a.host, "keep");
    EXPECT_EQ(a.port, 7);
  }
}

TEST(Config, RejectsListenHostsThatAreNotIpLiterals) {
  // Right characters, wrong shape: a bad address is a config error (exit 2) at parse time, not
  // a bind failure later.
  for (std::string_view text :
       {"256.0.0.1:80", "1.2.3:80", "1.2.3.4.5:80", "...:80", "[1:2:3]:80", "[:::]:80", "[.]:80"}) {
    SCOPED_TRACE(std::string(text));
    ListenAddress a;
    std::string error;
    EXPECT_FALSE(parse_listen_address(text, &a, &error));
  }
}

// Found with tests/fuzz/config_fuzz.cc: inet_pton stopped at a NUL, so listen =
// "127.0.0.1\u0000x:80" was accepted with host "127.0.0.1\0x" (an upstream too), which printed
// and compared as something other than the address keygate used.
TEST(Config, RejectsAddressesWithANulInside) {
  ListenAddress a;
  std::string error;
  using namespace std::string_view_literals;
  EXPECT_FALSE(parse_listen_address("127.0.0.1\0x:80"sv, &a, &error));
  EXPECT_EQ(error, "address must be a numeric IPv4 literal, got '127.0.0.1\\x00x'");
  EXPECT_FALSE(parse_listen_address("[::1\0x]:80"sv, &a, &error));
  EXPECT_TRUE(contains(parse_error("[server]\nlisten = \"127.0.0.1\\u0000x:80\"\n"),
                       "server.listen: address must be a numeric IPv4 literal"));
  EXPECT_TRUE(contains(parse_error("[[apis]]\nname = \"a\"\nroutes = [\"/a\"]\n"
                                   "upstreams = [\"127.0.0.1\\u0000x:80\"]\n"),
                       "apis.a.upstreams: expected \"IP:port\""));
}

TEST(Config, ExplainsMissingIpv6Brackets) {
  ListenAddress a;
  std::string error;
  ASSERT_FALSE(parse_listen_address("::1:80", &a, &error));
  EXPECT_TRUE(contains(error, "IPv6 addresses need brackets")) << error;
}

// ---------------------------------------------------------------------------------------------
// Command line

bool parse_args(std::vector<const char*> args, CommandLine* cli, std::string* error) {
  args.insert(args.begin(), "keygate");
  return parse_command_line(static_cast<int>(args.size()), args.data(), cli, error);
}

TEST(Config, NoFlagsOverrideNothing) {
  CommandLine cli;
  std::string error;
  ASSERT_TRUE(parse_args({}, &cli, &error)) << error;
  EXPECT_FALSE(cli.help);
  EXPECT_FALSE(cli.config_path);
  EXPECT_FALSE(cli.listen);
  EXPECT_FALSE(cli.admin_listen);
  EXPECT_FALSE(cli.data_dir);
  EXPECT_FALSE(cli.log_dir);
  EXPECT_FALSE(cli.workers);
}

TEST(Config, AcceptsFlagValuesSeparateOrAfterEquals) {
  CommandLine cli;
  std::string error;
  ASSERT_TRUE(parse_args({"--config", "/etc/kg.toml", "--listen=0.0.0.0:80", "--admin-listen",
                          "[::1]:81", "--data-dir=/d", "--log-dir", "/l", "--workers=3"},
                         &cli, &error))
      << error;
  EXPECT_EQ(cli.config_path, "/etc/kg.toml");
  EXPECT_EQ(cli.listen, "0.0.0.0:80");
  EXPECT_EQ(cli.admin_listen, "[::1]:81");
  EXPECT_EQ(cli.data_dir, "/d");
  EXPECT_EQ(cli.log_dir, "/l");
  EXPECT_EQ(cli.workers, 3u);
}

TEST(Config, FlagValueAfterEqualsMayContainEquals) {
  CommandLine cli;
  std::string error;
  ASSERT_TRUE(parse_args({"--data-dir=/a=b"}, &cli, &error)) << error;
  EXPECT_EQ(cli.data_dir, "/a=b");
}

TEST(Config, RecognisesHelpFlag) {
  for (const char* flag : {"--help", "-h"}) {
    CommandLine cli;
    std::string error;
    ASSERT_TRUE(parse_args({flag}, &cli, &error)) << error;
    EXPECT_TRUE(cli.help) << flag;
  }
}

TEST(Config, RejectsUnknownFlag) {
  CommandLine cli;
  std::string error;
  EXPECT_FALSE(parse_args({"--listn", "127.0.0.1:1"}, &cli, &error));
  EXPECT_EQ(error, "unknown flag '--listn' (see --help)");
}

TEST(Config, RejectsPositionalArgument) {
  CommandLine cli;
  std::string error;
  EXPECT_FALSE(parse_args({"serve"}, &cli, &error));
  EXPECT_EQ(error, "unexpected argument 'serve' (see --help)");
}

TEST(Config, RejectsFlagMissingItsValue) {
  CommandLine cli;
  std::string error;
  EXPECT_FALSE(parse_args({"--data-dir"}, &cli, &error));
  EXPECT_EQ(error, "flag --data-dir needs a value (see --help)");
}

TEST(Config, RejectsEmptyFlagValue) {
  CommandLine cli;
  std::string error;
  EXPECT_FALSE(parse_args({"--log-dir="}, &cli, &error));
  EXPECT_EQ(error, "flag --log-dir needs a non-empty value");
}

TEST(Config, RejectsBadWorkerCounts) {
  for (const char* value :
       {"--workers=1025", "--workers=-1", "--workers=two", "--workers=", "--workers=4x"}) {
    SCOPED_TRACE(value);
    CommandLine cli;
    std::string error;
    EXPECT_FALSE(parse_args({value}, &cli, &error));
    EXPECT_TRUE(contains(error, "--workers must be 0-1024")) << error;
  }
}

TEST(Config, AcceptsWorkerCountBounds) {
  CommandLine cli;
  std::string error;
  ASSERT_TRUE(parse_args({"--workers", "0"}, &cli, &error)) << error;
  EXPECT_EQ(cli.workers, 0u);
  ASSERT_TRUE(parse_args({"--workers", "1024"}, &cli, &error)) << error;
  EXPECT_EQ(cli.workers, 1024u);
}

TEST(Config, FailedCommandLineParseLeavesOutputUntouched) {
  CommandLine cli;
  cli.data_dir = "keep";
  std::string error;
  EXPECT_FALSE(parse_args({"--data-dir", "/new", "--bogus"}, &cli, &error));
  EXPECT_EQ(cli.data_dir, "keep");
}

// ---------------------------------------------------------------------------------------------
// Overrides and validation

TEST(Config, OverridesReplaceFileValues) {
  Config config = parse_ok("[server]\nlisten = \"127.0.0.1:1000\"\nworkers = 2\n");
  CommandLine cli;
  cli.listen = "[::]:0";
  cli.data_dir = "/override";
  cli.workers = 8;
  std::string error;
  ASSERT_TRUE(apply_overrides(cli, &config, &error)) << error;
  EXPECT_EQ(config.listen.host, "::");
  EXPECT_EQ(config.listen.port, 0);
  EXPECT_TRUE(config.listen.ipv6);
  EXPECT_EQ(config.data_dir, "/override");
  EXPECT_EQ(config.workers, 8u);
  // Not overridden: follows the data directory.
  EXPECT_EQ(log_directory(config), "/override/logs");
  EXPECT_EQ(config.admin_listen.port, 8081);
}

TEST(Config, OverrideWithBadAddressNamesTheFlag) {
  Config config;
  CommandLine cli;
  cli.admin_listen = "127.0.0.1";
  std::string error;
  EXPECT_FALSE(apply_overrides(cli, &config, &error));
  EXPECT_EQ(error.rfind("--admin-listen: ", 0), 0u) << error;
}

TEST(Config, DefaultsAreValid) {
  std::string error;
  EXPECT_TRUE(validate_config(Config{}, &error)) << error;
}

TEST(Config, ValidationRejectsEmptyDirectories) {
  std::string error;
  Config c;
  c.data_dir.clear();
  EXPECT_FALSE(validate_config(c, &error));
  EXPECT_EQ(error, "server.data_dir must not be empty");
}

// An unset log_dir is <data_dir>/logs; set, it must name a directory.
TEST(Config, LogDirectoryFollowsTheDataDirectoryUnlessSet) {
  Config c;
  c.data_dir = "/srv/keygate/";
  EXPECT_EQ(log_directory(c), "/srv/keygate/logs");
  c.data_dir = "relative";
  EXPECT_EQ(log_directory(c), "relative/logs");
  c.log_dir = "/var/log/keygate";
  EXPECT_EQ(log_directory(c), "/var/log/keygate");

  std::string error;
  Config parsed;
  EXPECT_FALSE(parse_config("[server]\nlog_dir = \"\"\n", "k.toml", &parsed, &error));
  EXPECT_EQ(error, "k.toml:2:11: server.log_dir must not be empty");
  CommandLine cli;
  cli.log_dir = "";
  EXPECT_FALSE(apply_overrides(cli, &parsed, &error));
  EXPECT_EQ(error, "--log-dir must not be empty");
}

TEST(Config, ValidationRejectsSameDataAndAdminAddress) {
  Config c;
  c.admin_listen = c.listen;
  std::string error;
  EXPECT_FALSE(validate_config(c, &error));
  EXPECT_EQ(error.rfind("server.listen and server.admin_listen must differ", 0), 0u) << error;
}

// Whether listening on `a` and on `b` would overlap, asked both ways round.
bool overlap(const char* a, const char* b) {
  ListenAddress x, y;
  std::string why;
  EXPECT_TRUE(parse_listen_address(a, &x, &why)) << a << ": " << why;
  EXPECT_TRUE(parse_listen_address(b, &y, &why)) << b << ": " << why;
  return addresses_overlap(x, y) && addresses_overlap(y, x);
}

// Spelled differently, the same port on one address: a usage error (exit 2), not a bind
// failure that reads as if another process held the port.
TEST(Config, ListenAddressesOverlapThroughWildcardsAndSpellings) {
  EXPECT_TRUE(overlap("127.0.0.1:8080", "127.0.0.1:8080"));
  EXPECT_TRUE(overlap("0.0.0.0:8080", "127.0.0.1:8080"));
  EXPECT_TRUE(overlap("[::]:8080", "127.0.0.1:8080"));
  EXPECT_TRUE(overlap("[::1]:8080", "[0::1]:8080"));
  EXPECT_TRUE(overlap("[::]:8080", "[::1]:8080"));
  EXPECT_FALSE(overlap("127.0.0.1:8080", "127.0.0.1:8081"));
  EXPECT_FALSE(overlap("127.0.0.1:8080", "127.0.0.2:8080"));
  EXPECT_FALSE(overlap("127.0.0.1:8080", "[::1]:8080"));
  EXPECT_FALSE(overlap("0.0.0.0:0", "0.0.0.0:0"));

  Config c;
  std::string error;
  ASSERT_TRUE(parse_listen_address("0.0.0.0:9000", &c.listen, &error));
  ASSERT_TRUE(parse_listen_address("127.0.0.1:9000", &c.admin_listen, &error));
  EXPECT_FALSE(validate_config(c, &error));
  EXPECT_NE(error.find("must differ"), std::string::npos) << error;
}

// Whether validate_config refuses an API forwarded to `upstream` while keygate listens on
// `listen`, for reaching keygate's own data port.
bool refused_as_own_port(const char* listen, const char* upstream) {
  Config c;
  std::string error;
  EXPECT_TRUE(parse_listen_address(listen, &c.listen, &error)) << listen;
  EXPECT_TRUE(parse_listen_address("127.0.0.1:9999", &c.admin_listen, &error));
  c.apis = {ApiConfig("orders", {"/orders"})};
  c.apis[0].upstreams = {upstream};
  if (validate_config(c, &error)) return false;
  EXPECT_EQ(error, std::string("apis.orders.upstreams: ") + upstream +
                       " is keygate's own data port (server.listen " + c.listen.to_string() +
                       "): every request would be forwarded back to keygate");
  return true;
}

// Forwarded to its own data port, keygate would take every request back and forward it again
// (a key in a body is not removed) until it ran out of connections: a start or reload error.
TEST(Config, RefusesAnUpstreamThatIsKeygatesOwnDataPort) {
  EXPECT_TRUE(refused_as_own_port("127.0.0.1:8080", "127.0.0.1:8080"));
  EXPECT_TRUE(refused_as_own_port("[::ffff:127.0.0.1]:8080", "127.0.0.1:8080"));
  EXPECT_TRUE(refused_as_own_port("0.0.0.0:8080", "127.0.0.1:8080"));
  EXPECT_TRUE(refused_as_own_port("0.0.0.0:8080", "127.1.2.3:8080"));
  EXPECT_TRUE(refused_as_own_port("[::]:8080", "127.0.0.1:8080"));
  EXPECT_TRUE(refused_as_own_port("[::]:8080", "[::1]:8080"));
  EXPECT_TRUE(refused_as_own_port("[::1]:8080", "[0::1]:8080"));
  EXPECT_TRUE(refused_as_own_port("10.1.2.3:8080", "10.1.2.3:8080"));
  // Not surely keygate: another port, another loopback address than the one listened on,
  // another host's address on a wildcard's port, IPv6 loopback on the IPv4 wildcard, port 0.
  EXPECT_FALSE(refused_as_own_port("127.0.0.1:8080", "127.0.0.1:8081"));
  EXPECT_FALSE(refused_as_own_port("127.0.0.1:8080", "127.0.0.2:8080"));
  EXPECT_FALSE(refused_as_own_port("0.0.0.0:8080", "10.1.2.3:8080"));
  EXPECT_FALSE(refused_as_own_port("0.0.0.0:8080", "[::1]:8080"));
  EXPECT_FALSE(refused_as_own_port("[::ffff:0.0.0.0]:8080", "[::1]:8080"));
  EXPECT_FALSE(refused_as_own_port("127.0.0.1:0", "127.0.0.1:8080"));
  // The admin port may be an API's upstream (its own keys then apply there).
  EXPECT_FALSE(refused_as_own_port("127.0.0.1:8080", "127.0.0.1:9999"));
}

// An IPv4-mapped IPv6 address is its IPv4 address: listening on [::ffff:127.0.0.1]:P takes P on
// 127.0.0.1, so the second bind failed (EADDRINUSE, exit 1, which systemd's
// RestartPreventExitStatus=2 does not stop from restarting in a loop) instead of a usage error.
TEST(Config, AnIpv4MappedListenAddressOverlapsItsIpv4Address) {
  EXPECT_TRUE(overlap("[::ffff:127.0.0.1]:8080", "127.0.0.1:8080"));
  EXPECT_TRUE(overlap("[::ffff:127.0.0.1]:8080", "[::FFFF:7f00:1]:8080"));
  EXPECT_TRUE(overlap("[::ffff:0.0.0.0]:8080", "127.0.0.2:8080"));  // the IPv4 wildcard
  EXPECT_FALSE(overlap("[::ffff:127.0.0.1]:8080", "127.0.0.2:8080"));
  EXPECT_FALSE(overlap("[::ffff:127.0.0.1]:8080", "127.0.0.1:8081"));
  EXPECT_FALSE(overlap("[::ffff:127.0.0.1]:8080", "[::1]:8080"));

  Config c;
  std::string error;
  ASSERT_TRUE(parse_listen_address("[::ffff:127.0.0.1]:9000", &c.listen, &error));
  ASSERT_TRUE(parse_listen_address("127.0.0.1:9000", &c.admin_listen, &error));
  EXPECT_FALSE(validate_config(c, &error));
  EXPECT_NE(error.find("must differ"), std::string::npos) << error;
}

// Connecting to [::ffff:127.0.0.1]:9001 reaches the server at 127.0.0.1:9001: listed both ways, it
// got twice its share of the round robin, which "listed twice" exists to prevent.
TEST(Config, RejectsAnUpstreamListedAgainAsItsIpv4MappedAddress) {
  const std::string error = parse_error(
      "[[apis]]\nname = \"a\"\nroutes = [\"/a\"]\n"
      "upstreams = [\"127.0.0.1:9001\", \"[::ffff:127.0.0.1]:9001\"]\n");
  EXPECT_NE(error.find("is listed twice"), std::string::npos) << error;
  ListenAddress v4;
  ListenAddress mapped;
  ListenAddress v6;
  std::string why;
  ASSERT_TRUE(parse_listen_address("127.0.0.1:1", &v4, &why));
  ASSERT_TRUE(parse_listen_address("[::ffff:7f00:1]:1", &mapped, &why));
  ASSERT_TRUE(parse_listen_address("[::1]:1", &v6, &why));
  EXPECT_TRUE(same_host(v4, mapped));
  EXPECT_TRUE(same_host(mapped, v4));
  EXPECT_FALSE(same_host(v4, v6));
  EXPECT_FALSE(same_host(mapped, v6));
}

TEST(Config, ValidationAllowsBothListenersOnEphemeralPorts) {
  Config c;
  c.listen = ListenAddress{"127.0.0.1", 0, false};
  c.admin_listen = ListenAddress{"127.0.0.1", 0, false};
  std::string error;
  EXPECT_TRUE(validate_config(c, &error)) << error;
}

TEST(Config, UsageShowsTheOneReadyLineAsPrintedAndTheEnvironment) {
  const std::string usage(usage_text());
  // tools/keygate_main.cc prints one line for both listeners, with the ring mode.
  EXPECT_TRUE(contains(usage, "prints one line to stdout")) << usage;
  EXPECT_TRUE(
      contains(usage, "  keygate: listening data=ADDR:PORT admin=ADDR:PORT workers=N ring=MODE\n"))
      << usage;
  EXPECT_FALSE(contains(usage, "one line per listener")) << usage;
  EXPECT_TRUE(contains(usage, "\nEnvironment")) << usage;
  EXPECT_TRUE(contains(usage, "  KEYGATE_BOOTSTRAP_ADMIN_KEY ")) << usage;
}

TEST(Config, UsageNamesEveryFlag) {
  const std::string usage(usage_text());
  for (std::string_view flag : {"--config", "--listen", "--admin-listen", "--data-dir", "--log-dir",
                                "--workers", "--help"}) {
    EXPECT_TRUE(contains(usage, flag)) << flag;
  }
}

TEST(Config, ReloadChangesNameEveryChangedKeyButTheApisAsLiveOrRestart) {
  Config running;
  std::string error;
  ASSERT_TRUE(parse_config("[[apis]]\nname = \"orders\"\nroutes = [\"/orders\"]\n", "a.toml",
                           &running, &error))
      << error;
  Config reloaded;
  ASSERT_TRUE(parse_config("[server]\nworkers = 3\n[limits]\nidle_timeout_ms = 5\n"
                           "send_rate_min_bytes_per_s = 1\nsend_buffer_bytes = 8192\n"
                           "[cache]\nmax_keys = 10\n[log]\nenabled = false\n"
                           "[[apis]]\nname = \"billing\"\nroutes = [\"/billing\"]\n",
                           "b.toml", &reloaded, &error))
      << error;
  // The idle timeout is applied by the reload; the rest waits for a restart.
  EXPECT_EQ(settings_needing_restart(running, reloaded),
            (std::vector<std::string>{"server.workers", "limits.send_buffer_bytes",
                                      "cache.max_keys", "log.enabled"}));
  const ReloadChanges changes = reload_changes(running, reloaded);
  EXPECT_EQ(changes.restart, settings_needing_restart(running, reloaded));
  EXPECT_EQ(changes.live, (std::vector<std::string>{"limits.idle_timeout_ms",
                                                      "limits.send_rate_min_bytes_per_s"}));
  // Applied: the live one is the reloaded value, the restart-only ones and the APIs are not.
  Config applied = running;
  apply_live_settings(reloaded, &applied);
  EXPECT_EQ(applied.limits.idle_timeout_ms, 5u);
  EXPECT_EQ(applied.limits.send_rate_min_bytes_per_s, 1u);
  EXPECT_EQ(applied.limits.send_buffer_bytes, running.limits.send_buffer_bytes);
  EXPECT_EQ(applied.workers, running.workers);
  EXPECT_EQ(applied.cache_max_keys, running.cache_max_keys);
  EXPECT_EQ(applied.log_enabled, running.log_enabled);
  ASSERT_EQ(applied.apis.size(), 1u);
  EXPECT_EQ(applied.apis[0].name, "orders");
  // Only the APIs changed: nothing to name.
  Config same = running;
  same.apis.clear();
  EXPECT_TRUE(settings_needing_restart(running, same).empty());
  // A flag that overrides the file on both sides is no change.
  CommandLine cli;
  cli.listen = "127.0.0.1:0";
  Config moved;
  ASSERT_TRUE(parse_config("[server]\nlisten = \"127.0.0.1:9999\"\n", "c.toml", &moved, &error));
  ASSERT_TRUE(apply_overrides(cli, &moved, &error)) << error;
  ASSERT_TRUE(apply_overrides(cli, &running, &error)) << error;
  EXPECT_TRUE(settings_needing_restart(running, moved).empty());
}

// The same socket address spelled another way binds the same sockets: no restart named.
TEST(Config, ReloadChangesTakeAListenAddressSpelledAnotherWayAsTheSame) {
  std::string error;
  Config running;
  ASSERT_TRUE(parse_config("[server]\nlisten = \"[::1]:9100\"\n"
                           "admin_listen = \"127.0.0.1:9101\"\n",
                           "a.toml", &running, &error))
      << error;
  Config respelled;
  ASSERT_TRUE(parse_config("[server]\nlisten = \"[0:0::1]:9100\"\n"
                           "admin_listen = \"[::ffff:127.0.0.1]:9101\"\n",
                           "b.toml", &respelled, &error))
      << error;
  EXPECT_TRUE(settings_needing_restart(running, respelled).empty());
  Config moved;
  ASSERT_TRUE(parse_config("[server]\nlisten = \"[::1]:9102\"\n"
                           "admin_listen = \"127.0.0.2:9101\"\n",
                           "c.toml", &moved, &error))
      << error;
  EXPECT_EQ(settings_needing_restart(running, moved),
            (std::vector<std::string>{"server.listen", "server.admin_listen"}));
}

// Every setting docs/configuration.md documents (each table row "| `key` | default | ..." under
// a "## `[section]`" heading; not [[apis]]) is named by reload_changes when a reload changes it,
// in the list (live or restart) the "Reload" section's table gives it, and
// apply_live_settings copies it exactly when it is live: those functions list the fields by
// hand, and a field added to the parser and the docs but not there would make a reload that
// changes it say nothing (or say it applied what it did not). The changed value is the
// documented default doubled, or +1, or -1 (the first the parser and validate_config accept);
// addresses move their port, paths (and settings unset by default: backup.dir) get a name.
TEST(Config, EveryDocumentedSettingChangedByAReloadIsNamedLiveOrRestartAsTheDocsSay) {
  std::ifstream file(KEYGATE_SOURCE_DIR "/docs/configuration.md");
  ASSERT_TRUE(file.good()) << "cannot read docs/configuration.md";
  const std::string doc((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  // The "Reload" table: "| `a.b`, `c.d` | live | why |" (or restart).
  std::map<std::string, bool> live_by_doc;
  {
    const size_t from = doc.find("\n## Reload\n");
    ASSERT_NE(from, std::string::npos) << "no Reload section";
    const size_t to = doc.find("\n## ", from + 1);
    std::string_view reload = std::string_view(doc).substr(from, to - from);
    for (size_t at = 0; at < reload.size();) {
      size_t end = reload.find('\n', at);
      if (end == std::string_view::npos) end = reload.size();
      const std::string_view line = reload.substr(at, end - at);
      at = end + 1;
      if (!line.starts_with("| `")) continue;
      const size_t cell_end = line.find(" | ", 2);
      ASSERT_NE(cell_end, std::string_view::npos) << line;
      const std::string_view keys = line.substr(2, cell_end - 2);
      const std::string_view rest = line.substr(cell_end + 3);
      const bool live = rest.starts_with("live |");
      ASSERT_TRUE(live || rest.starts_with("restart |")) << line;
      for (size_t k = keys.find('`'); k != std::string_view::npos;) {
        const size_t k_end = keys.find('`', k + 1);
        ASSERT_NE(k_end, std::string_view::npos) << line;
        live_by_doc[std::string(keys.substr(k + 1, k_end - k - 1))] = live;
        k = keys.find('`', k_end + 1);
      }
    }
  }
  const Config running;
  std::string section;
  size_t checked = 0;
  for (size_t at = 0; at < doc.size();) {
    size_t end = doc.find('\n', at);
    if (end == std::string::npos) end = doc.size();
    const std::string_view line = std::string_view(doc).substr(at, end - at);
    at = end + 1;
    if (line.starts_with("## ")) {
      section.clear();
      if (line.starts_with("## `[") && !line.starts_with("## `[[") && line.ends_with("]`")) {
        section = std::string(line.substr(5, line.size() - 7));
      }
      continue;
    }
    if (section.empty() || !line.starts_with("| `")) continue;
    const size_t key_end = line.find('`', 3);
    ASSERT_NE(key_end, std::string_view::npos) << line;
    const std::string key(line.substr(3, key_end - 3));
    const size_t default_at = line.find("| ", key_end) + 2;
    std::string def(line.substr(default_at, line.find(" |", default_at) - default_at));
    if (def.size() >= 2 && def.front() == '`' && def.back() == '`') {
      def = def.substr(1, def.size() - 2);
    }
    std::vector<std::string> values;
    if (def == "true" || def == "false") {
      values = {def == "true" ? "false" : "true"};
    } else if (def.starts_with('"') && def.find(':') != std::string::npos) {
      values = {"\"127.0.0.1:18" + std::to_string(checked % 100 + 100) + "\""};
    } else if (def.starts_with('"') || def == "unset") {
      values = {"\"/tmp/keygate-reload-test-" + key + "\""};
    } else if (def == "[]") {
      values = {"[\"reload-test.example\"]"};
    } else {
      const unsigned long long d = std::stoull(def);
      if (d > 0) values.push_back(std::to_string(d * 2));
      values.push_back(std::to_string(d + 1));
      if (d > 0) values.push_back(std::to_string(d - 1));
    }
    bool parsed = false;
    for (const std::string& value : values) {
      Config reloaded;
      std::string error;
      if (!parse_config("[" + section + "]\n" + key + " = " + value + "\n", "r.toml", &reloaded,
                        &error) ||
          !validate_config(reloaded, &error)) {
        continue;
      }
      parsed = true;
      const std::string name = section + "." + key;
      const auto doc_class = live_by_doc.find(name);
      if (doc_class == live_by_doc.end()) {
        ADD_FAILURE() << name << " is missing from the Reload section's table";
        break;
      }
      const bool live = doc_class->second;
      const ReloadChanges changes = reload_changes(running, reloaded);
      const std::vector<std::string> just_it{name};
      EXPECT_EQ(live ? changes.live : changes.restart, just_it) << name << " = " << value;
      EXPECT_TRUE((live ? changes.restart : changes.live).empty()) << name << " = " << value;
      // Applied: a live one no longer differs from the file, a restart one still does.
      Config applied = running;
      apply_live_settings(reloaded, &applied);
      const ReloadChanges after = reload_changes(applied, reloaded);
      EXPECT_TRUE(after.live.empty()) << name << " = " << value;
      EXPECT_EQ(after.restart, changes.restart) << name << " = " << value;
      EXPECT_TRUE(reload_changes(running, applied).restart.empty()) << name << " = " << value;
      break;
    }
    EXPECT_TRUE(parsed) << section << "." << key << ": no changed value was accepted";
    ++checked;
  }
  EXPECT_GE(checked, 30u) << "the docs' tables were not found";
}

}  // namespace
}  // namespace keygate
