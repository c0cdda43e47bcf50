// Metric names in PromQL expressions: what the shipped alerts and dashboard
// select, so tests can hold them against what ballast exports.

export const PROMQL_WORDS = new Set(
  ('by without on ignoring group_left group_right bool and or unless offset inf nan ' +
    'sum min max avg count stddev stdvar topk bottomk quantile count_values group ' +
    'rate irate increase delta idelta deriv predict_linear histogram_quantile absent absent_over_time time timestamp ' +
    'vector scalar abs ceil floor round clamp clamp_min clamp_max changes resets label_replace label_join sort sort_desc ' +
    'avg_over_time min_over_time max_over_time sum_over_time count_over_time last_over_time quantile_over_time day_of_week hour minute')
    .split(' '),
);

/** Metric names a PromQL expression selects (label matchers, ranges, grouping labels and functions removed). */
export function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\$\{?\w+\}?/g, ' ');
  const names = new Set<string>();
  for (const m of stripped.matchAll(/\d+(?:\.\d+)?(?:e[+-]?\d+)?|([A-Za-z_:][\w:]*)(\s*\()?/g)) {
    const word = m[1];
    if (word === undefined || m[2] !== undefined || PROMQL_WORDS.has(word)) continue;
    names.add(word);
  }
  return [...names];
}
