// A gtest fixture that owns one running keygate for each test.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>

#include <memory>
#include <string>

#include "tests/integration/test_server.h"

namespace keygate::integration {

// Starts a TestServer from server_options() in SetUp; TearDown stops it with SIGTERM and
// expects a clean exit with keygate's "stopped" line (a test that stopped it itself is left
// alone).
class RunningServer : public ::testing::Test {
 protected:
  virtual ServerOptions server_options() = 0;

  void SetUp() override {
    server_ = std::make_unique<TestServer>(server_options());
    std::string error;
    ASSERT_TRUE(server_->start(&error)) << error << "\nstderr: " << server_->error_output();
  }

  void TearDown() override {
    if (!server_ || !server_->running()) return;
    const ExitStatus status = server_->stop(SIGTERM);
    EXPECT_TRUE(status.clean()) << status.describe() << "\nstdout: " << server_->output()
                                << "\nstderr: " << server_->error_output();
    EXPECT_NE(server_->output().find("keygate: stopped"), std::string::npos) << server_->output();
  }

  std::unique_ptr<TestServer> server_;
};

}  // namespace keygate::integration
