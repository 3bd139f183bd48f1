export { DiskStorage } from './disk-storage';
export type {
  DiskStorageOptions,
  MessageInfo,
  QueueInfo,
  QuarantineReport,
} from './disk-storage';
export { Envelope, Headers } from './envelope';
export type { ClientInfo, EnvelopeInit } from './envelope';
export * from './errors';
export { MAX_ENV_FILE_SIZE } from './format';
