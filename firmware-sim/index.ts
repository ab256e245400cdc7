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
  TELEMETRY_HEADER_BYTES,
  decodeTelemetry,
  encodeTelemetry,
  nowMs,
  writeTelemetryHeader,
  type TelemetryRecord,
} from './telemetry-payload.js';
