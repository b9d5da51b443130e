SELECT
  CAST(COALESCE(g.canonical, i.`canonical_segment_id`) AS STRING) AS canonical_segment_id,
  CAST(i.`type` AS STRING) AS external_id_type,
  CAST(i.`value` AS STRING) AS external_id_value,
  i.`timestamp` AS `timestamp`,
  i.`timestamp` AS o0,
  i.`seq` AS o1
FROM `engage`.`user_identifiers` AS i
LEFT JOIN (
  SELECT
    `segment_id` AS segment_id,
    MAX(`canonical_segment_id`) AS canonical
  FROM `engage`.`id_graph`
  WHERE
    `segment_id` <> `canonical_segment_id`
  GROUP BY
    `segment_id`
) AS g
  ON g.segment_id = i.`canonical_segment_id`
ORDER BY
  i.`timestamp` NULLS LAST,
  i.`seq` NULLS LAST
