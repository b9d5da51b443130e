CREATE TABLE "braze_sync"."state_0123abcd" (
  uid VARCHAR(MAX) NOT NULL,
  checksum BIGINT,
  c0 VARCHAR(MAX),
  c1 VARCHAR(MAX),
  c2 VARCHAR(MAX)
)
