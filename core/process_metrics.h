#pragma once
// The standard process_* metrics (as the Prometheus client libraries export them), read from
// /proc on each scrape.

#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

namespace ferry {

class ProcessCollector : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace ferry
