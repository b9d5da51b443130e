CREATE TABLE "braze_sync"."state_0123abcd" (
  uid VARCHAR NOT NULL,
  checksum BIGINT,
  c0 VARCHAR,
  c1 VARCHAR,
  c2 VARCHAR
)
