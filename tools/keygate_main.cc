// keygate: the server binary. Thin wiring: flags and config (core), data directory (storage),
// listeners and workers (net). See --help.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "core/builtin_handler.h"
#include "core/config.h"
#include "net/server.h"
#include "storage/data_dir.h"

namespace {

constexpr int kExitStartupFailure = 1;
constexpr int kExitUsage = 2;

int usage_error(const std::string& message) {
  std::fprintf(stderr, "keygate: %s\n", message.c_str());
  return kExitUsage;
}

bool read_file(const std::string& path, std::string* out, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = "cannot read config file " + path;
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  keygate::CommandLine cli;
  std::string error;
  if (!keygate::parse_command_line(argc, argv, &cli, &error)) return usage_error(error);
  if (cli.help) {
    std::fputs(keygate::usage_text().data(), stdout);
    return 0;
  }

  keygate::Config config;
  if (cli.config_path) {
    std::string text;
    if (!read_file(*cli.config_path, &text, &error) ||
        !keygate::parse_config(text, *cli.config_path, &config, &error)) {
      return usage_error(error);
    }
  }
  if (!keygate::apply_overrides(cli, &config, &error) ||
      !keygate::validate_config(config, &error)) {
    return usage_error(error);
  }

  // Signals are taken synchronously by this thread; every thread started below inherits the
  // mask, so a SIGTERM can never interrupt a worker mid-request. SIGPIPE is ignored outright
  // (sends use MSG_NOSIGNAL, but belt and braces).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  keygate::storage::DataDir data_dir;
  if (!data_dir.open(config.data_dir, &error) ||
      !keygate::storage::make_directories(config.log_dir, &error)) {
    std::fprintf(stderr, "keygate: %s\n", error.c_str());
    return kExitStartupFailure;
  }

  unsigned workers = config.workers;
  if (workers == 0) {
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    workers = cpus > 0 ? static_cast<unsigned>(cpus) : 1;
  }

  keygate::BuiltinHandlerFactory data_handlers;
  keygate::BuiltinHandlerFactory admin_handlers;
  keygate::net::ServerOptions options;
  options.data_listen = config.listen;
  options.admin_listen = config.admin_listen;
  options.workers = workers;
  options.limits = config.limits;
  options.data_handlers = &data_handlers;
  options.admin_handlers = &admin_handlers;
  keygate::net::Server server(options);
  if (!server.start(&error)) {
    std::fprintf(stderr, "keygate: %s\n", error.c_str());
    return kExitStartupFailure;
  }
  keygate::ListenAddress data = config.listen;
  keygate::ListenAddress admin = config.admin_listen;
  data.port = server.data_port();
  admin.port = server.admin_port();
  std::printf("keygate: listening data=%s admin=%s workers=%u ring=%s\n", data.to_string().c_str(),
              admin.to_string().c_str(), workers, server.ring_mode().c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  std::printf("keygate: %s received, draining (up to %u ms)\n", sig == SIGTERM ? "SIGTERM" : "SIGINT",
              config.limits.drain_timeout_ms);
  std::fflush(stdout);
  server.stop();
  std::printf("keygate: stopped\n");
  std::fflush(stdout);
  return 0;
}
