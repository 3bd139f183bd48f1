'use strict';

/**
 * Nearest-rank percentile of an ascending array; ceiling.c uses the same
 * rule, so the C figures compare with these.
 */
function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  const i = Math.max(0, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.min(i, sorted.length - 1)];
}

function latencySummary(latencies) {
  const sorted = Float64Array.from(latencies).sort();
  return {
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
  };
}

module.exports = { percentile, latencySummary };
