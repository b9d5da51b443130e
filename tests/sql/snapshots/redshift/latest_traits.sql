SELECT
  t.sid AS canonical_segment_id,
  MAX(CASE WHEN t.name = 'plan' THEN t.value END) AS "plan",
  MAX(CASE WHEN t.name = 'it\'s "quoted"' THEN t.value END) AS "it's ""quoted""",
  MAX(g.canonical) AS merged_to
FROM (
  SELECT
    "canonical_segment_id" AS sid,
    "name" AS name,
    CAST("value" AS VARCHAR(MAX)) AS value,
    ROW_NUMBER() OVER (
      PARTITION BY "canonical_segment_id", "name"
      ORDER BY "seq" DESC NULLS LAST, "timestamp" DESC NULLS LAST
    ) AS rn
  FROM "engage"."user_traits"
  WHERE
    NOT "value" IS NULL
) AS t
LEFT JOIN (
  SELECT
    "segment_id" AS segment_id,
    MAX("canonical_segment_id") AS canonical
  FROM "engage"."id_graph"
  WHERE
    "segment_id" <> "canonical_segment_id"
  GROUP BY
    "segment_id"
) AS g
  ON g.segment_id = t.sid
WHERE
  t.rn = 1
GROUP BY
  t.sid
ORDER BY
  t.sid
