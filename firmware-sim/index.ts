export { DeviceFleet, type FleetEvents, type FleetRuntime, type FleetStats } from './device-fleet.js';
export {
  FleetConfigError,
  fleetOptionsSchema,
  resolveFleetConfig,
  topicFor,
  type FleetConfig,
  type FleetOptions,
} from './fleet-config.js';
export { LatencyHistogram } from './latency-histogram.js';
export {
  DistributedFleet,
  distributedFleetOptionsSchema,
  runDistributedFleet,
  type DistributedFleetEvents,
  type DistributedFleetOptions,
  type DistributedRun,
  type FleetProgress,
} from './distributed-fleet.js';
export { DEVICES_PER_PROCESS, defaultProcessCount, planWorkerSlices } from './fleet-plan.js';
export type { FleetRunSummary } from './run-summary.js';
export {
  DEVICES_PER_SOURCE_ADDRESS,
  defaultSourcePool,
  parseSourceAddresses,
} from './source-addresses.js';
export { FleetWorkerError } from './worker-process.js';
export {
  TELEMETRY_HEADER_BYTES,
  decodeTelemetry,
  encodeTelemetry,
  nowMs,
  writeTelemetryHeader,
  type TelemetryRecord,
} from './telemetry-payload.js';
