CREATE TABLE `braze_sync`.`state_0123abcd` (
  uid STRING NOT NULL,
  checksum INT64,
  c0 STRING,
  c1 STRING,
  c2 STRING
)
