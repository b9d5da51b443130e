SELECT
  MAX("timestamp")
FROM "engage"."user_traits"
