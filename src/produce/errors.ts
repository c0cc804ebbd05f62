/** What a producer throws, each with a `code` a caller can switch on. */

/** The in-memory bound (max_buffered_rows) is reached: events that add rows are refused. */
export class BufferFullError extends Error {
  readonly code = "BUFFER_FULL";
  constructor(readonly maxBufferedRows: number) {
    super(
      `spend buffer full (${maxBufferedRows} rows): the sink is not keeping up or is unreachable`,
    );
    this.name = "BufferFullError";
  }
}

/** recordAll() refused a batch: every event it refused, by index. Nothing was recorded. */
export class BatchRefusedError extends Error {
  readonly code = "BATCH_REFUSED";
  constructor(
    readonly refused: readonly {
      index: number;
      error: import("./spend-event.js").SpendEventError;
    }[],
    readonly size: number,
  ) {
    super(`${refused.length} of ${size} events refused: nothing was recorded`);
    this.name = "BatchRefusedError";
  }
}

/** close() could not deliver everything within closeTimeoutMs. */
export class CloseTimeoutError extends Error {
  readonly code = "CLOSE_TIMEOUT";
  constructor(
    readonly undeliveredBatches: number,
    readonly undeliveredRows: number,
  ) {
    super(
      `close() gave up: ${undeliveredBatches} batches (${undeliveredRows} rows) could not be delivered`,
    );
    this.name = "CloseTimeoutError";
  }
}

/** The producer was used after close(). */
export class ProducerClosedError extends Error {
  readonly code = "PRODUCER_CLOSED";
  constructor() {
    super("producer is closed");
    this.name = "ProducerClosedError";
  }
}
