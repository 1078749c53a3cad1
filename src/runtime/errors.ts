/** Errors that carry a gRPC status code (numbers from grpc's status.proto; no import of grpc here). */
export const Code = {
  CANCELLED: 1,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

export class RuntimeError extends Error {
  constructor(
    readonly code: (typeof Code)[keyof typeof Code],
    message: string,
  ) {
    super(message);
    this.name = 'RuntimeError';
  }
}
