CREATE TABLE "braze_sync"."state_0123abcd" (
  uid TEXT NOT NULL,
  checksum BIGINT,
  c0 TEXT,
  c1 TEXT,
  c2 TEXT
)
