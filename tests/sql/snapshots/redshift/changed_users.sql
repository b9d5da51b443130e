SELECT
  d.uid,
  s."c0" AS s0,
  CAST(NULL AS VARCHAR(MAX)) AS s1,
  s."c2" AS s2
FROM desired_in AS d
LEFT JOIN "braze_sync"."state_0123abcd" AS s
  ON s.uid = d.uid
WHERE
  s.uid IS NULL
  OR s.checksum IS NULL
  OR d.checksum IS NULL
  OR s.checksum <> d.checksum
