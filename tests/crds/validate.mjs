// Validates KEDA and Prometheus Operator objects (a JSON array on stdin) with the schemas of
// @kubernetes-models (generated from the projects' CRDs). Prints a JSON array of problems: empty = valid.
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";
import { PodMonitor, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = {
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "keda.sh/v1alpha1/TriggerAuthentication": TriggerAuthentication,
  "monitoring.coreos.com/v1/PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
const problems = [];
for (const object of JSON.parse(input)) {
  const id = `${object.apiVersion}/${object.kind}`;
  const Model = models[id];
  if (!Model) {
    problems.push({ object: id, error: "no schema for this kind" });
    continue;
  }
  try {
    new Model(object).validate();
  } catch (error) {
    problems.push({ object: `${id} ${object.metadata?.name}`, error: String(error.message ?? error) });
  }
}
process.stdout.write(JSON.stringify(problems));
