#include "storage/key_store.h"

#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tests/storage/file_size_limit.h"
#include "tests/storage/temp_dir.h"

extern char** environ;

namespace keygate::storage {
namespace {

using testing::FileSizeLimit;
using testing::TempDir;

KeyRecord make_record(const std::string& id, const std::string& value) {
  KeyRecord record;
  record.id = id;
  record.digest = digest_key(value);
  record.hint = make_key_hint(value);
  record.description = "key " + id;
  record.apis = {"orders", "billing"};
  record.created_at = 1700000000;
  record.updated_at = 1700000001;
  return record;
}

void expect_same(const KeyRecord& a, const KeyRecord& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_TRUE(digests_equal(a.digest, b.digest));
  EXPECT_EQ(a.hint, b.hint);
  EXPECT_EQ(a.description, b.description);
  EXPECT_EQ(a.apis, b.apis);
  EXPECT_EQ(a.user, b.user);
  EXPECT_EQ(a.log_request, b.log_request);
  EXPECT_EQ(a.log_response, b.log_response);
  EXPECT_EQ(a.enabled, b.enabled);
  EXPECT_EQ(a.created_at, b.created_at);
  EXPECT_EQ(a.updated_at, b.updated_at);
  EXPECT_EQ(a.expires_at, b.expires_at);
}

std::string digest_entry(const KeyDigest& digest) {
  return "k" + std::string(reinterpret_cast<const char*>(digest.data()), digest.size());
}

class KeyStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(open_store(store_.get())); }

  // Closes the store and opens it again from disk.
  bool reopen() {
    store_.reset();
    store_ = std::make_unique<KeyStore>();
    return open_store(store_.get());
  }

  bool open_store(KeyStore* store) {
    std::string error;
    const bool ok = store->open(db_path(), &error);
    EXPECT_TRUE(ok) << error;
    return ok;
  }
  std::string db_path() const { return dir_.path() + "/db"; }

  TempDir dir_;
  std::unique_ptr<KeyStore> store_ = std::make_unique<KeyStore>();
};

TEST_F(KeyStoreTest, AFreshStoreHasNoKeys) {
  bool any = true;
  ASSERT_TRUE(store_->has_keys(&any).is_ok());
  EXPECT_FALSE(any);
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_digest(digest_key("nothing"), &out).is_not_found());
  EXPECT_TRUE(store_->get_key_by_id("knothing", &out).is_not_found());
}

TEST_F(KeyStoreTest, APutRecordReadsBackByDigestAndById) {
  KeyRecord record = make_record("kaaaaaaaaaaaa", "value-one-value-one");
  record.user = "kharnagy@domain.corp";
  record.log_request = true;
  record.expires_at = 1800000000;
  ASSERT_TRUE(store_->put_key(record).is_ok());

  KeyRecord by_digest;
  ASSERT_TRUE(store_->get_key_by_digest(record.digest, &by_digest).is_ok());
  expect_same(record, by_digest);
  KeyRecord by_id;
  ASSERT_TRUE(store_->get_key_by_id(record.id, &by_id).is_ok());
  expect_same(record, by_id);
  bool any = false;
  ASSERT_TRUE(store_->has_keys(&any).is_ok());
  EXPECT_TRUE(any);
}

TEST_F(KeyStoreTest, KeysAndUsersSurviveAReopen) {
  const KeyRecord record = make_record("kaaaaaaaaaaaa", "value-one-value-one");
  ASSERT_TRUE(store_->put_key(record).is_ok());
  User user{"alice", {Grant{"orders", {"GET"}, "/orders"}}};
  ASSERT_TRUE(store_->put_user(user).is_ok());

  ASSERT_TRUE(reopen());
  KeyRecord out;
  ASSERT_TRUE(store_->get_key_by_id(record.id, &out).is_ok());
  expect_same(record, out);
  User read;
  ASSERT_TRUE(store_->get_user("alice", &read).is_ok());
  EXPECT_EQ(read.name, "alice");
  ASSERT_EQ(read.grants.size(), 1u);
  EXPECT_EQ(read.grants[0].api, "orders");
  EXPECT_EQ(read.grants[0].methods, std::vector<std::string>{"GET"});
  EXPECT_EQ(read.grants[0].path_prefix, "/orders");
}

TEST_F(KeyStoreTest, CreateRefusesAnExistingIdOrDigest) {
  const KeyRecord record = make_record("kaaaaaaaaaaaa", "value-one-value-one");
  ASSERT_TRUE(store_->put_key(record, KeyStore::PutMode::kCreate).is_ok());
  EXPECT_TRUE(store_->put_key(record, KeyStore::PutMode::kCreate).is_conflict());
  KeyRecord same_digest = record;
  same_digest.id = "kbbbbbbbbbbbb";
  EXPECT_TRUE(store_->put_key(same_digest, KeyStore::PutMode::kCreate).is_conflict());
  EXPECT_TRUE(store_->put_key(same_digest, KeyStore::PutMode::kUpsert).is_conflict());
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_id("kbbbbbbbbbbbb", &out).is_not_found());
}

TEST_F(KeyStoreTest, UpdateOfAMissingIdIsNotFound) {
  EXPECT_TRUE(
      store_
          ->put_key(make_record("kaaaaaaaaaaaa", "value-one-value-one"), KeyStore::PutMode::kUpdate)
          .is_not_found());
}

TEST_F(KeyStoreTest, AnUpdateKeepsTheIndexPointingAtTheSameDigest) {
  KeyRecord record = make_record("kaaaaaaaaaaaa", "value-one-value-one");
  ASSERT_TRUE(store_->put_key(record).is_ok());
  record.description = "changed";
  ASSERT_TRUE(store_->put_key(record, KeyStore::PutMode::kUpdate).is_ok());
  KeyRecord out;
  ASSERT_TRUE(store_->get_key_by_id(record.id, &out).is_ok());
  EXPECT_EQ(out.description, "changed");
}

TEST_F(KeyStoreTest, RotationMovesTheKeyToTheNewDigestAndRemovesTheOld) {
  const KeyRecord before = make_record("kaaaaaaaaaaaa", "old-value-old-value");
  ASSERT_TRUE(store_->put_key(before).is_ok());
  KeyRecord after = before;
  after.digest = digest_key("new-value-new-value");
  ASSERT_TRUE(store_->put_key(after, KeyStore::PutMode::kUpdate).is_ok());

  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_digest(before.digest, &out).is_not_found());
  ASSERT_TRUE(store_->get_key_by_digest(after.digest, &out).is_ok());
  ASSERT_TRUE(store_->get_key_by_id(before.id, &out).is_ok());
  EXPECT_TRUE(digests_equal(out.digest, after.digest));
  size_t keys = 0;
  ASSERT_TRUE(store_->for_each_key([&](KeyRecord&) { return ++keys, true; }).is_ok());
  EXPECT_EQ(keys, 1u);
}

TEST_F(KeyStoreTest, RotationOntoAnotherKeysDigestIsAConflict) {
  const KeyRecord a = make_record("kaaaaaaaaaaaa", "value-a-value-a");
  const KeyRecord b = make_record("kbbbbbbbbbbbb", "value-b-value-b");
  ASSERT_TRUE(store_->put_key(a).is_ok());
  ASSERT_TRUE(store_->put_key(b).is_ok());
  KeyRecord stolen = a;
  stolen.digest = b.digest;
  EXPECT_TRUE(store_->put_key(stolen).is_conflict());
  KeyRecord out;
  ASSERT_TRUE(store_->get_key_by_digest(b.digest, &out).is_ok());
  EXPECT_EQ(out.id, b.id);
}

TEST_F(KeyStoreTest, DeleteRemovesTheRecordAndItsIndexEntry) {
  const KeyRecord record = make_record("kaaaaaaaaaaaa", "value-one-value-one");
  ASSERT_TRUE(store_->put_key(record).is_ok());
  KeyRecord deleted;
  ASSERT_TRUE(store_->delete_key_by_id(record.id, &deleted).is_ok());
  expect_same(record, deleted);
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_id(record.id, &out).is_not_found());
  EXPECT_TRUE(store_->get_key_by_digest(record.digest, &out).is_not_found());
  EXPECT_TRUE(store_->delete_key_by_id(record.id).is_not_found());
  // The id is free again.
  EXPECT_TRUE(store_->put_key(record, KeyStore::PutMode::kCreate).is_ok());
}

// A rotation of `before` to `new_value` whose old value stays valid until `valid_until`.
KeyRecord rotated_with_grace(const KeyRecord& before, const std::string& new_value,
                             int64_t valid_until) {
  KeyRecord after = before;
  after.digest = digest_key(new_value);
  after.previous_digest = before.digest;
  after.previous_valid_until = valid_until;
  return after;
}

TEST_F(KeyStoreTest, ARotationWithGraceFilesTheRecordUnderBothDigests) {
  const KeyRecord before = make_record("kaaaaaaaaaaaa", "old-value-old-value");
  ASSERT_TRUE(store_->put_key(before).is_ok());
  const KeyRecord after = rotated_with_grace(before, "new-value-new-value", 1700000300);
  ASSERT_TRUE(store_->put_key(after, KeyStore::PutMode::kUpdate).is_ok());

  for (const KeyDigest& d : {before.digest, after.digest}) {
    KeyRecord out;
    ASSERT_TRUE(store_->get_key_by_digest(d, &out).is_ok());
    EXPECT_EQ(out.id, before.id);
    EXPECT_TRUE(digests_equal(out.digest, after.digest));
    ASSERT_TRUE(out.previous_digest.has_value());
    EXPECT_TRUE(digests_equal(*out.previous_digest, before.digest));
    EXPECT_EQ(out.previous_valid_until, 1700000300);
  }
  // Listed and scanned once, under its own digest.
  std::vector<std::string> scanned;
  ASSERT_TRUE(store_->for_each_key([&](KeyRecord& r) {
    scanned.push_back(r.id);
    EXPECT_TRUE(digests_equal(r.digest, after.digest));
    return true;
  }).is_ok());
  EXPECT_EQ(scanned, std::vector<std::string>{before.id});
  std::vector<KeyRecord> listed;
  ASSERT_TRUE(store_->list_keys("", 10, &listed).is_ok());
  EXPECT_EQ(listed.size(), 1u);
  // Both entries survive a reopen.
  ASSERT_TRUE(reopen());
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_digest(before.digest, &out).is_ok());
  EXPECT_TRUE(store_->get_key_by_digest(after.digest, &out).is_ok());
}

TEST_F(KeyStoreTest, AnUpdateThatDropsThePreviousDigestRemovesItsEntry) {
  const KeyRecord before = make_record("kaaaaaaaaaaaa", "old-value-old-value");
  ASSERT_TRUE(store_->put_key(before).is_ok());
  KeyRecord after = rotated_with_grace(before, "new-value-new-value", 1700000300);
  ASSERT_TRUE(store_->put_key(after, KeyStore::PutMode::kUpdate).is_ok());
  after.previous_digest.reset();
  after.previous_valid_until = 0;
  ASSERT_TRUE(store_->put_key(after, KeyStore::PutMode::kUpdate).is_ok());
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_digest(before.digest, &out).is_not_found());
  ASSERT_TRUE(store_->get_key_by_digest(after.digest, &out).is_ok());
  EXPECT_FALSE(out.previous_digest.has_value());
}

TEST_F(KeyStoreTest, ASecondRotationRemovesTheFirstPreviousDigest) {
  const KeyRecord first = make_record("kaaaaaaaaaaaa", "value-one-value-one");
  ASSERT_TRUE(store_->put_key(first).is_ok());
  const KeyRecord second = rotated_with_grace(first, "value-two-value-two", 1700000300);
  ASSERT_TRUE(store_->put_key(second, KeyStore::PutMode::kUpdate).is_ok());
  const KeyRecord third = rotated_with_grace(second, "value-three-value-three", 1700000600);
  ASSERT_TRUE(store_->put_key(third, KeyStore::PutMode::kUpdate).is_ok());
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_digest(first.digest, &out).is_not_found());
  EXPECT_TRUE(store_->get_key_by_digest(second.digest, &out).is_ok());
  EXPECT_TRUE(store_->get_key_by_digest(third.digest, &out).is_ok());
  // A rotation without grace leaves only the newest digest.
  KeyRecord fourth = third;
  fourth.digest = digest_key("value-four-value-four");
  fourth.previous_digest.reset();
  ASSERT_TRUE(store_->put_key(fourth, KeyStore::PutMode::kUpdate).is_ok());
  EXPECT_TRUE(store_->get_key_by_digest(second.digest, &out).is_not_found());
  EXPECT_TRUE(store_->get_key_by_digest(third.digest, &out).is_not_found());
  EXPECT_TRUE(store_->get_key_by_digest(fourth.digest, &out).is_ok());
}

TEST_F(KeyStoreTest, DeleteRemovesThePreviousDigestEntryToo) {
  const KeyRecord before = make_record("kaaaaaaaaaaaa", "old-value-old-value");
  ASSERT_TRUE(store_->put_key(before).is_ok());
  const KeyRecord after = rotated_with_grace(before, "new-value-new-value", 1700000300);
  ASSERT_TRUE(store_->put_key(after, KeyStore::PutMode::kUpdate).is_ok());
  ASSERT_TRUE(store_->delete_key_by_id(before.id).is_ok());
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_digest(before.digest, &out).is_not_found());
  EXPECT_TRUE(store_->get_key_by_digest(after.digest, &out).is_not_found());
  bool any = true;
  ASSERT_TRUE(store_->has_keys(&any).is_ok());
  EXPECT_FALSE(any);
}

TEST_F(KeyStoreTest, APreviousDigestOfAnotherKeyIsAConflict) {
  const KeyRecord a = make_record("kaaaaaaaaaaaa", "value-a-value-a");
  const KeyRecord b = make_record("kbbbbbbbbbbbb", "value-b-value-b");
  ASSERT_TRUE(store_->put_key(a).is_ok());
  ASSERT_TRUE(store_->put_key(b).is_ok());
  KeyRecord claims_b = rotated_with_grace(a, "value-c-value-c", 1700000300);
  claims_b.previous_digest = b.digest;
  EXPECT_TRUE(store_->put_key(claims_b, KeyStore::PutMode::kUpdate).is_conflict());
  KeyRecord out;
  ASSERT_TRUE(store_->get_key_by_digest(b.digest, &out).is_ok());
  EXPECT_EQ(out.id, b.id);
  ASSERT_TRUE(store_->get_key_by_id(a.id, &out).is_ok());
  EXPECT_TRUE(digests_equal(out.digest, a.digest));
}

TEST_F(KeyStoreTest, ListKeysPagesInIdOrder) {
  for (const char* id : {"kc", "ka", "ke", "kb", "kd"}) {
    ASSERT_TRUE(store_->put_key(make_record(id, std::string("value-of-") + id)).is_ok());
  }
  std::vector<KeyRecord> page;
  ASSERT_TRUE(store_->list_keys("", 2, &page).is_ok());
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].id, "ka");
  EXPECT_EQ(page[1].id, "kb");
  page.clear();
  ASSERT_TRUE(store_->list_keys("kb", 2, &page).is_ok());
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].id, "kc");
  EXPECT_EQ(page[1].id, "kd");
  page.clear();
  ASSERT_TRUE(store_->list_keys("kd", 10, &page).is_ok());
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(page[0].id, "ke");
  page.clear();
  ASSERT_TRUE(store_->list_keys("ke", 10, &page).is_ok());
  EXPECT_TRUE(page.empty());
}

TEST_F(KeyStoreTest, ABatchWritesEveryRecord) {
  std::vector<KeyRecord> batch;
  for (int i = 0; i < 100; ++i) {
    batch.push_back(
        make_record("k" + std::to_string(1000 + i), "batch-value-" + std::to_string(i)));
  }
  ASSERT_TRUE(store_->put_keys_batch(batch).is_ok());
  for (const KeyRecord& record : batch) {
    KeyRecord out;
    ASSERT_TRUE(store_->get_key_by_id(record.id, &out).is_ok());
    expect_same(record, out);
  }
}

TEST_F(KeyStoreTest, ABatchWithAnExistingDigestWritesNothing) {
  const KeyRecord existing = make_record("kexisting", "existing-value-1");
  ASSERT_TRUE(store_->put_key(existing).is_ok());
  std::vector<KeyRecord> batch = {make_record("knew1", "fresh-value-1"),
                                  make_record("knew2", "existing-value-1"),
                                  make_record("knew3", "fresh-value-3")};
  size_t failed = 99;
  EXPECT_TRUE(store_->put_keys_batch(batch, &failed).is_conflict());
  EXPECT_EQ(failed, 1u);
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_id("knew1", &out).is_not_found());
  EXPECT_TRUE(store_->get_key_by_id("knew3", &out).is_not_found());
  size_t keys = 0;
  ASSERT_TRUE(store_->for_each_key([&](KeyRecord&) { return ++keys, true; }).is_ok());
  EXPECT_EQ(keys, 1u);
}

TEST_F(KeyStoreTest, ABatchThatRepeatsADigestOrAnIdWritesNothing) {
  size_t failed = 99;
  std::vector<KeyRecord> digests = {make_record("kone", "same-value-same"),
                                    make_record("ktwo", "same-value-same")};
  EXPECT_TRUE(store_->put_keys_batch(digests, &failed).is_conflict());
  EXPECT_EQ(failed, 1u);
  std::vector<KeyRecord> ids = {make_record("ksame", "value-one-value"),
                                make_record("kother", "value-two-value"),
                                make_record("ksame", "value-three-value")};
  EXPECT_TRUE(store_->put_keys_batch(ids, &failed).is_conflict());
  EXPECT_EQ(failed, 2u);
  bool any = true;
  ASSERT_TRUE(store_->has_keys(&any).is_ok());
  EXPECT_FALSE(any);
}

TEST_F(KeyStoreTest, ARecordThatDoesNotDecodeReadsAsAnIoErrorNotACrash) {
  const KeyDigest digest = digest_key("corrupted-value");
  ASSERT_TRUE(store_->write_raw_for_testing(digest_entry(digest), "\x01garbage\xff\xff").is_ok());
  ASSERT_TRUE(
      store_
          ->write_raw_for_testing(
              "ikbroken", std::string_view(reinterpret_cast<const char*>(digest.data()), 32))
          .is_ok());
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_digest(digest, &out).is_io_error());
  EXPECT_TRUE(store_->get_key_by_id("kbroken", &out).is_io_error());
  EXPECT_TRUE(store_->for_each_key([](KeyRecord&) { return true; }).is_io_error());
  std::vector<KeyRecord> page;
  EXPECT_TRUE(store_->list_keys("", 10, &page).is_io_error());
  // The operator's way out: deleting by id still works.
  KeyRecord deleted;
  ASSERT_TRUE(store_->delete_key_by_id("kbroken", &deleted).is_ok());
  EXPECT_TRUE(digests_equal(deleted.digest, digest));
  EXPECT_TRUE(store_->get_key_by_digest(digest, &out).is_not_found());
}

// A key in a rotation's grace is filed under both digests, with the same bytes. When those no
// longer decode, the delete cannot read the previous digest out of them; the entry it left
// behind failed every later scan of the keys, and so the next start (KeyService loads the keys
// with for_each_key).
TEST_F(KeyStoreTest, DeletingAKeyInItsGraceWhoseRecordDoesNotDecodeRemovesBothEntries) {
  const KeyRecord before = make_record("kaaaaaaaaaaaa", "old-value-old-value");
  ASSERT_TRUE(store_->put_key(before).is_ok());
  const KeyRecord after = rotated_with_grace(before, "new-value-new-value", 1700000300);
  ASSERT_TRUE(store_->put_key(after, KeyStore::PutMode::kUpdate).is_ok());
  const KeyRecord other = make_record("kbbbbbbbbbbbb", "another-keys-value");
  ASSERT_TRUE(store_->put_key(other).is_ok());
  for (const KeyDigest& d : {before.digest, after.digest}) {
    ASSERT_TRUE(store_->write_raw_for_testing(digest_entry(d), "\x01garbage\xff\xff").is_ok());
  }

  KeyRecord deleted;
  ASSERT_TRUE(store_->delete_key_by_id(before.id, &deleted).is_ok());
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_digest(after.digest, &out).is_not_found());
  EXPECT_TRUE(store_->get_key_by_digest(before.digest, &out).is_not_found());
  std::vector<std::string> scanned;
  EXPECT_TRUE(store_->for_each_key([&](KeyRecord& r) {
    scanned.push_back(r.id);
    return true;
  }).is_ok());
  EXPECT_EQ(scanned, std::vector<std::string>{other.id});
}

TEST_F(KeyStoreTest, AnIndexEntryOfTheWrongSizeReadsAsAnIoError) {
  ASSERT_TRUE(store_->write_raw_for_testing("ikshort", "tooshort").is_ok());
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_id("kshort", &out).is_io_error());
}

TEST_F(KeyStoreTest, ARecordFiledUnderAnotherDigestReadsAsAnIoError) {
  const KeyRecord record = make_record("kaaaaaaaaaaaa", "value-one-value-one");
  const KeyDigest elsewhere = digest_key("somewhere-else");
  ASSERT_TRUE(
      store_->write_raw_for_testing(digest_entry(elsewhere), encode_key_record(record)).is_ok());
  KeyRecord out;
  EXPECT_TRUE(store_->get_key_by_digest(elsewhere, &out).is_io_error());
}

TEST_F(KeyStoreTest, UsersArePutListedAndDeleted) {
  ASSERT_TRUE(store_->put_user(User{"bob", {}}).is_ok());
  ASSERT_TRUE(store_->put_user(User{"alice", {Grant{"orders", {}, ""}}}).is_ok());
  std::vector<std::string> names;
  ASSERT_TRUE(
      store_->for_each_user([&](User& u) { return names.push_back(u.name), true; }).is_ok());
  EXPECT_EQ(names, (std::vector<std::string>{"alice", "bob"}));
  ASSERT_TRUE(store_->delete_user("alice").is_ok());
  EXPECT_TRUE(store_->delete_user("alice").is_not_found());
  User out;
  EXPECT_TRUE(store_->get_user("alice", &out).is_not_found());
  ASSERT_TRUE(store_->get_user("bob", &out).is_ok());
}

TEST_F(KeyStoreTest, ListUsersPagesInByteOrderStartingAfterTheGivenName) {
  for (const char* name : {"bob", "alice", "Zed", "a b", "a+b", "a%2B", "a/b", "carol"}) {
    ASSERT_TRUE(store_->put_user(User{name, {}}).is_ok());
  }
  const auto page = [&](std::string_view after, size_t limit) {
    std::vector<User> users;
    EXPECT_TRUE(store_->list_users(after, limit, &users).is_ok());
    std::vector<std::string> names;
    for (const User& u : users) names.push_back(u.name);
    return names;
  };
  EXPECT_EQ(page("", 3), (std::vector<std::string>{"Zed", "a b", "a%2B"}));
  EXPECT_EQ(page("a%2B", 3), (std::vector<std::string>{"a+b", "a/b", "alice"}));
  EXPECT_EQ(page("alice", 3), (std::vector<std::string>{"bob", "carol"}));
  EXPECT_EQ(page("carol", 3), std::vector<std::string>{});
  // A name no user has (one deleted since the page before): the next page starts right after
  // where it would be, also when it is a prefix of stored names.
  EXPECT_EQ(page("a c", 2), (std::vector<std::string>{"a%2B", "a+b"}));
  EXPECT_EQ(page("a", 1), std::vector<std::string>{"a b"});
  EXPECT_EQ(page("", 0), std::vector<std::string>{});
  // Entries of other kinds (a key, the schema version) are never listed as users.
  ASSERT_TRUE(store_->put_key(make_record("kaaaaaaaaaaaa", "value-one-value-one")).is_ok());
  EXPECT_EQ(page("", 100).size(), 8u);
}

TEST_F(KeyStoreTest, AUserThatDoesNotDecodeReadsAsAnIoError) {
  ASSERT_TRUE(store_->write_raw_for_testing("ubroken", "\xff\xfe").is_ok());
  User out;
  EXPECT_TRUE(store_->get_user("broken", &out).is_io_error());
  EXPECT_TRUE(store_->for_each_user([](User&) { return true; }).is_io_error());
  std::vector<User> page;
  EXPECT_TRUE(store_->list_users("", 10, &page).is_io_error());
  // A page that starts after it does not read it.
  EXPECT_TRUE(store_->list_users("broken", 10, &page).is_ok());
  // A user filed under another name is damage too.
  ASSERT_TRUE(store_->write_raw_for_testing("uother", encode_user(User{"someone", {}})).is_ok());
  EXPECT_TRUE(store_->list_users("broken", 10, &page).is_io_error());
}

// The last-used space: its own entries, never the record's.
KeyStore::LastUsed last_used(const std::string& id, int64_t at) { return {id, at}; }

TEST_F(KeyStoreTest, ALastUseReadsBackAndSurvivesAReopen) {
  ASSERT_TRUE(store_->put_key(make_record("kAAAAAAAAAAAA", "value-a"), KeyStore::PutMode::kCreate)
                  .is_ok());
  int64_t at = 0;
  EXPECT_TRUE(store_->get_last_used("kAAAAAAAAAAAA", &at).is_not_found());
  const std::vector<KeyStore::LastUsed> batch = {last_used("kAAAAAAAAAAAA", 1800000000)};
  size_t written = 0;
  ASSERT_TRUE(store_->put_last_used(batch, &written).is_ok());
  EXPECT_EQ(written, 1u);
  ASSERT_TRUE(store_->get_last_used("kAAAAAAAAAAAA", &at).is_ok());
  EXPECT_EQ(at, 1800000000);
  ASSERT_TRUE(reopen());
  at = 0;
  ASSERT_TRUE(store_->get_last_used("kAAAAAAAAAAAA", &at).is_ok());
  EXPECT_EQ(at, 1800000000);
}

TEST_F(KeyStoreTest, ALastUseNeverMovesBackAndSkipsKeysThatDoNotExist) {
  ASSERT_TRUE(store_->put_key(make_record("kAAAAAAAAAAAA", "value-a"), KeyStore::PutMode::kCreate)
                  .is_ok());
  size_t written = 0;
  ASSERT_TRUE(store_->put_last_used(std::vector{last_used("kAAAAAAAAAAAA", 2000)}, &written)
                  .is_ok());
  ASSERT_TRUE(store_->put_last_used(std::vector{last_used("kAAAAAAAAAAAA", 1000),
                                                last_used("kNOSUCHKEY000", 3000)},
                                    &written)
                  .is_ok());
  EXPECT_EQ(written, 0u);
  int64_t at = 0;
  ASSERT_TRUE(store_->get_last_used("kAAAAAAAAAAAA", &at).is_ok());
  EXPECT_EQ(at, 2000);
  EXPECT_TRUE(store_->get_last_used("kNOSUCHKEY000", &at).is_not_found());
}

TEST_F(KeyStoreTest, DeletingAKeyDeletesItsLastUseAndALateReportDoesNotBringItBack) {
  ASSERT_TRUE(store_->put_key(make_record("kAAAAAAAAAAAA", "value-a"), KeyStore::PutMode::kCreate)
                  .is_ok());
  ASSERT_TRUE(store_->put_last_used(std::vector{last_used("kAAAAAAAAAAAA", 2000)}).is_ok());
  ASSERT_TRUE(store_->delete_key_by_id("kAAAAAAAAAAAA").is_ok());
  int64_t at = 0;
  EXPECT_TRUE(store_->get_last_used("kAAAAAAAAAAAA", &at).is_not_found());
  // A use reported before the delete and written after it.
  ASSERT_TRUE(store_->put_last_used(std::vector{last_used("kAAAAAAAAAAAA", 2001)}).is_ok());
  EXPECT_TRUE(store_->get_last_used("kAAAAAAAAAAAA", &at).is_not_found());
  // A key made again with that id starts never used.
  ASSERT_TRUE(store_->put_key(make_record("kAAAAAAAAAAAA", "value-b"), KeyStore::PutMode::kCreate)
                  .is_ok());
  EXPECT_TRUE(store_->get_last_used("kAAAAAAAAAAAA", &at).is_not_found());
}

TEST_F(KeyStoreTest, UpdatesAndRotationKeepTheLastUseAndALastUseKeepsTheRecord) {
  KeyRecord record = make_record("kAAAAAAAAAAAA", "value-a");
  ASSERT_TRUE(store_->put_key(record, KeyStore::PutMode::kCreate).is_ok());
  ASSERT_TRUE(store_->put_last_used(std::vector{last_used("kAAAAAAAAAAAA", 2000)}).is_ok());
  record.description = "changed";
  ASSERT_TRUE(store_->put_key(record, KeyStore::PutMode::kUpdate).is_ok());
  record.digest = digest_key("value-rotated");  // a rotation: same id, new digest
  ASSERT_TRUE(store_->put_key(record, KeyStore::PutMode::kUpdate).is_ok());
  int64_t at = 0;
  ASSERT_TRUE(store_->get_last_used("kAAAAAAAAAAAA", &at).is_ok());
  EXPECT_EQ(at, 2000);
  ASSERT_TRUE(store_->put_last_used(std::vector{last_used("kAAAAAAAAAAAA", 3000)}).is_ok());
  KeyRecord read;
  ASSERT_TRUE(store_->get_key_by_id("kAAAAAAAAAAAA", &read).is_ok());
  expect_same(read, record);
  ASSERT_TRUE(store_->get_last_used("kAAAAAAAAAAAA", &at).is_ok());
  EXPECT_EQ(at, 3000);
}

TEST_F(KeyStoreTest, ALastUseEntryOfTheWrongSizeReadsAsAnIoError) {
  ASSERT_TRUE(store_->write_raw_for_testing("lkAAAAAAAAAAAA", "xyz").is_ok());
  int64_t at = 0;
  EXPECT_TRUE(store_->get_last_used("kAAAAAAAAAAAA", &at).is_io_error());
}

TEST_F(KeyStoreTest, ASecondOpenOfTheSameDirectoryFailsAsLocked) {
  KeyStore second;
  std::string error;
  EXPECT_FALSE(second.open(db_path(), &error));
  EXPECT_NE(error.find("locked"), std::string::npos) << error;
  EXPECT_EQ(error.find('\n'), std::string::npos);
}

TEST(KeyStore, CorruptedFilesFailTheOpenWithOneLineSayingSo) {
  TempDir dir;
  const std::string path = dir.path() + "/db";
  {
    KeyStore store;
    std::string error;
    ASSERT_TRUE(store.open(path, &error)) << error;
    ASSERT_TRUE(store.put_key(make_record("kaaaaaaaaaaaa", "value-one-value-one")).is_ok());
  }
  for (const std::string& file : testing::list_files(path)) {
    if (std::filesystem::path(file).filename().string().starts_with("MANIFEST-")) {
      std::ofstream(file, std::ios::binary | std::ios::trunc) << "this is not a manifest";
    }
  }
  KeyStore store;
  std::string error;
  EXPECT_FALSE(store.open(path, &error));
  EXPECT_NE(error.find("corrupted"), std::string::npos) << error;
  EXPECT_EQ(error.find('\n'), std::string::npos);
}

TEST(KeyStore, AnUnknownSchemaVersionIsRefused) {
  TempDir dir;
  const std::string path = dir.path() + "/db";
  {
    KeyStore store;
    std::string error;
    ASSERT_TRUE(store.open(path, &error)) << error;
    ASSERT_TRUE(store.write_raw_for_testing("mschema", "9").is_ok());
  }
  KeyStore store;
  std::string error;
  EXPECT_FALSE(store.open(path, &error));
  EXPECT_NE(error.find("schema version 9"), std::string::npos) << error;
}

TEST(KeyStore, CallsBeforeOpenAreUnavailable) {
  KeyStore store;
  KeyRecord out;
  EXPECT_EQ(store.get_key_by_id("k", &out).code(), Status::Code::kUnavailable);
  EXPECT_EQ(store.put_key(make_record("k", "v-v-v-v-v")).code(), Status::Code::kUnavailable);
}

// The test re-runs this binary filtered to itself with this variable set; that child writes
// one key and dies by SIGKILL without any shutdown, and the parent reopens the store.
constexpr const char* kCrashDirEnv = "KEYGATE_STORE_CRASH_DIR";

void write_then_die_by_kill9(const char* path) {
  KeyStore store;
  std::string error;
  if (!store.open(path, &error)) std::_Exit(3);
  if (!store.put_key(make_record("kcrash", "survives-kill-9")).is_ok()) std::_Exit(4);
  ::kill(::getpid(), SIGKILL);
  std::_Exit(5);
}

TEST(KeyStore, AnAcknowledgedWriteSurvivesKill9) {
  if (const char* child_path = std::getenv(kCrashDirEnv)) write_then_die_by_kill9(child_path);
  TempDir dir;
  const std::string path = dir.path() + "/db";
  const std::string env = std::string(kCrashDirEnv) + "=" + path;
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  envp.push_back(const_cast<char*>(env.c_str()));
  envp.push_back(nullptr);
  std::string filter = "--gtest_filter=KeyStore.AnAcknowledgedWriteSurvivesKill9";
  char exe[] = "/proc/self/exe";
  char* argv[] = {exe, filter.data(), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(::posix_spawn(&pid, exe, nullptr, nullptr, argv, envp.data()), 0);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL) << "child status " << wstatus;

  KeyStore store;
  std::string error;
  ASSERT_TRUE(store.open(path, &error)) << error;
  KeyRecord out;
  ASSERT_TRUE(store.get_key_by_id("kcrash", &out).is_ok());
  EXPECT_TRUE(digests_equal(out.digest, digest_key("survives-kill-9")));
}

// What the process writes to stderr while it lives, through a pipe: the death test's own capture
// is a file, which the file size limit would cut to its first byte.
class StderrPipe {
 public:
  StderrPipe() {
    if (::pipe(fds_) != 0) return;
    saved_ = ::dup(STDERR_FILENO);
    ::dup2(fds_[1], STDERR_FILENO);
  }
  ~StderrPipe() { take(); }
  StderrPipe(const StderrPipe&) = delete;
  StderrPipe& operator=(const StderrPipe&) = delete;
  bool ok() const { return saved_ >= 0; }

  // Puts stderr back and returns what was written meanwhile (at most a pipe's capacity).
  std::string take() {
    std::string said;
    if (saved_ < 0) return said;
    ::dup2(saved_, STDERR_FILENO);
    ::close(saved_);
    ::close(fds_[1]);
    saved_ = -1;
    char buffer[4096];
    ssize_t n;
    while ((n = ::read(fds_[0], buffer, sizeof buffer)) > 0) said.append(buffer, n);
    ::close(fds_[0]);
    return said;
  }

 private:
  int fds_[2] = {-1, -1};
  int saved_ = -1;
};

// Writes while no file of the store can grow; the exit code says which step went wrong (0: none).
int write_while_the_disk_refuses() {
  TempDir dir;
  KeyStore store;
  std::string error;
  if (!store.open(dir.path() + "/db", &error)) return 3;
  if (!store.put_key(make_record("kbefore", "written-before-the-disk-filled")).is_ok()) return 4;
  StderrPipe journal;
  if (!journal.ok()) return 11;
  {
    FileSizeLimit full(1);
    if (!full.ok()) return 5;
    // Each fails in the WAL; RocksDB logs the failure to its info log, which cannot grow either.
    if (!store.put_key(make_record("kduring", "written-while-the-disk-is-full")).is_io_error()) {
      return 6;
    }
    if (!store.put_user(User{"alice", {}}).is_io_error()) return 7;
    if (!store.delete_key_by_id("kbefore").is_io_error()) return 8;
  }
  // One line for the three failures, saying what failed and what the operator gets.
  const std::string said = journal.take();
  const std::string_view head = "keygate: key store: a write failed (IO error: ";
  if (said.rfind(head, 0) != 0) return 12;
  if (said.find("refused with 503 store_unavailable") == std::string::npos) return 13;
  if (said.find('\n') != said.size() - 1) return 14;
  KeyRecord out;
  if (!store.get_key_by_id("kbefore", &out).is_ok()) return 9;
  if (!store.get_key_by_id("kduring", &out).is_not_found()) return 10;
  return 0;
}

// A full disk under the store fails the write with io_error (the admin API's 503), and keygate
// goes on serving. RocksDB's own info logger asserted on its next line after a failed write of
// it (the distributions' librocksdb keeps assertions on): the store's own report of the failed
// write aborted the process. The journal says why changes fail, once for the three failures.
TEST(KeyStore, AWriteTheDiskRefusesIsAnIoErrorNotACrash) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(std::_Exit(write_while_the_disk_refuses()), ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace keygate::storage
