SELECT DISTINCT
  "name"
FROM "engage"."user_traits"
WHERE
  NOT "name" IS NULL
ORDER BY
  1
