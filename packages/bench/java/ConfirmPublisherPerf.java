import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.MessageProperties;
import java.util.HashMap;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.ConcurrentNavigableMap;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.Semaphore;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A PerfTest-like publisher for the RabbitMQ ceiling of `pnpm bench` (RabbitMQ PerfTest itself is
 * not served by the Maven mirror the bench runs against). One connection, one channel in confirm
 * mode, persistent messages of a fixed size published to the default exchange with the queue as
 * routing key, at most `--confirm` unconfirmed messages outstanding (like `perf-test --confirm N`),
 * no consumer. It declares the queue (durable, `x-queue-type`), publishes `--warmup` messages
 * untimed, then `--count` timed ones, and prints
 *
 *   rate=<msg/s> count=<n> nacked=<n> seconds=<s>
 *
 * The clock runs from the first timed publish to the last confirm. The queue is deleted at the end.
 *
 * Run as a single-file program: `java -cp 'lib/*' ConfirmPublisherPerf.java --queue q …`, with the
 * broker URI in the environment variable BUSBAR_BENCH_AMQP_URI (default amqp://localhost).
 */
public class ConfirmPublisherPerf {
  public static void main(String[] args) throws Exception {
    Map<String, String> o = new HashMap<>();
    for (int i = 0; i + 1 < args.length; i += 2) o.put(args[i].replaceFirst("^--", ""), args[i + 1]);
    String uri = System.getenv().getOrDefault("BUSBAR_BENCH_AMQP_URI", "amqp://localhost");
    String queue = o.getOrDefault("queue", "bench-ceiling");
    String queueType = o.getOrDefault("queue-type", "quorum");
    int count = Integer.parseInt(o.getOrDefault("count", "200000"));
    int warmup = Integer.parseInt(o.getOrDefault("warmup", "20000"));
    int size = Integer.parseInt(o.getOrDefault("size", "256"));
    int confirm = Integer.parseInt(o.getOrDefault("confirm", "500"));

    ConnectionFactory factory = new ConnectionFactory();
    factory.setUri(uri);
    try (Connection conn = factory.newConnection("busbar-bench-ceiling")) {
      Channel ch = conn.createChannel();
      ch.queueDeclare(queue, true, false, false, Map.of("x-queue-type", queueType));
      try {
        ch.confirmSelect();
        Semaphore window = new Semaphore(confirm);
        ConcurrentNavigableMap<Long, Boolean> outstanding = new ConcurrentSkipListMap<>();
        AtomicLong nacked = new AtomicLong();
        ch.addConfirmListener(
            (tag, multiple) -> window.release(settle(outstanding, tag, multiple)),
            (tag, multiple) -> {
              int n = settle(outstanding, tag, multiple);
              nacked.addAndGet(n);
              window.release(n);
            });
        byte[] body = new byte[size];
        new Random(42).nextBytes(body);
        AMQP.BasicProperties props = MessageProperties.PERSISTENT_BASIC;

        long t0 = 0;
        for (int i = 0; i < warmup + count; i++) {
          if (i == warmup) {
            drain(window, confirm);
            nacked.set(0);
            t0 = System.nanoTime();
          }
          window.acquire();
          outstanding.put(ch.getNextPublishSeqNo(), Boolean.TRUE);
          ch.basicPublish("", queue, props, body);
        }
        if (count == 0) t0 = System.nanoTime();
        drain(window, confirm);
        double secs = (System.nanoTime() - t0) / 1e9;
        System.out.printf("rate=%.1f count=%d nacked=%d seconds=%.3f%n", count / secs, count, nacked.get(), secs);
      } finally {
        Channel del = conn.createChannel();
        del.queueDelete(queue);
        del.close();
      }
    }
  }

  /** Removes the confirmed (or nacked) sequence numbers; returns how many were outstanding. */
  private static int settle(ConcurrentNavigableMap<Long, Boolean> outstanding, long tag, boolean multiple) {
    if (!multiple) return outstanding.remove(tag) != null ? 1 : 0;
    ConcurrentNavigableMap<Long, Boolean> head = outstanding.headMap(tag, true);
    int n = head.size();
    head.clear();
    return n;
  }

  /** Waits until nothing is outstanding. */
  private static void drain(Semaphore window, int confirm) throws InterruptedException {
    window.acquire(confirm);
    window.release(confirm);
  }
}
