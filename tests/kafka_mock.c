/*
 * kafka_mock.c -- a Kafka cluster for the specs: librdkafka's mock
 * cluster (rdkafka_mock.h) in a process of its own, on 127.0.0.1.
 *
 *     kafka_mock [--brokers N] [--topic NAME:PARTITIONS]...
 *
 * Starts N brokers (default 3, ids 1..N) listening on ephemeral ports of
 * 127.0.0.1, creates the topics named (partition p led by broker
 * p % N + 1; other topics are created on first use, with the mock's
 * defaults), prints
 *
 *     bootstrap 127.0.0.1:PORT,127.0.0.1:PORT,...
 *
 * on stdout and then takes one command per line on stdin, answering each
 * with "ok N CMD" or "error N CMD: reason" (N counts the commands, so a
 * caller can wait for the answer to its own):
 *
 *     down ID|all               rd_kafka_mock_broker_set_down
 *     up ID|all                 rd_kafka_mock_broker_set_up
 *     errors APIKEY CODE COUNT  rd_kafka_mock_push_request_errors: the next
 *                               COUNT requests of APIKEY (0 = Produce) fail
 *                               with error CODE (6 = NOT_LEADER_FOR_PARTITION)
 *     topic NAME PARTITIONS     rd_kafka_mock_topic_create
 *     rtt ID|all MS             rd_kafka_mock_broker_set_rtt
 *     quit                      exit 0
 *
 * End of stdin also ends it, so a caller that dies (closing its end of
 * the pipe) takes the cluster with it; SIGTERM or SIGKILL to its pid stop
 * it at any time.  The cluster runs on librdkafka's own threads; this one
 * only reads commands.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define MAX_LINE 512

static void die(const char *what, const char *why) {
    fprintf(stderr, "kafka_mock: %s: %s\n", what, why);
    exit(1);
}

/* "all" is -1 (every broker) for the mock API; else a broker id >= 1. */
static int broker_arg(const char *s, int32_t *id) {
    char *end;
    long v;
    if (strcmp(s, "all") == 0) { *id = -1; return 1; }
    v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > 1000) return 0;
    *id = (int32_t)v;
    return 1;
}

static int int_arg(const char *s, long lo, long hi, long *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}

static long n_brokers = 3;

/* A topic whose partition p is led by broker p % brokers + 1: the same
 * layout every time (the mock would pick leaders at random), so runs that
 * compare two producers on two topics load the brokers alike. */
static rd_kafka_resp_err_t topic_create(rd_kafka_mock_cluster_t *mc, const char *name, int parts) {
    rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mc, name, parts, 1);
    for (int p = 0; !err && p < parts; p++)
        err = rd_kafka_mock_partition_set_leader(mc, name, p, (int32_t)(p % n_brokers + 1));
    return err;
}

/* Runs one command; NULL on success, else the reason. */
static const char *run_command(rd_kafka_mock_cluster_t *mc, char **w, int n) {
    int32_t id;
    long a, b, c;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (n == 2 && strcmp(w[0], "down") == 0) {
        if (!broker_arg(w[1], &id)) return "bad broker id";
        err = rd_kafka_mock_broker_set_down(mc, id);
    } else if (n == 2 && strcmp(w[0], "up") == 0) {
        if (!broker_arg(w[1], &id)) return "bad broker id";
        err = rd_kafka_mock_broker_set_up(mc, id);
    } else if (n == 3 && strcmp(w[0], "rtt") == 0) {
        if (!broker_arg(w[1], &id) || !int_arg(w[2], 0, 600000, &a)) return "bad arguments";
        err = rd_kafka_mock_broker_set_rtt(mc, id, (int)a);
    } else if (n == 4 && strcmp(w[0], "errors") == 0) {
        if (!int_arg(w[1], 0, 100, &a) || !int_arg(w[2], -200, 200, &b) ||
            !int_arg(w[3], 1, 100000, &c))
            return "bad arguments";
        rd_kafka_resp_err_t *errs = malloc((size_t)c * sizeof *errs);
        if (!errs) return "out of memory";
        for (long i = 0; i < c; i++) errs[i] = (rd_kafka_resp_err_t)b;
        rd_kafka_mock_push_request_errors_array(mc, (int16_t)a, (size_t)c, errs);
        free(errs);
    } else if (n == 3 && strcmp(w[0], "topic") == 0) {
        if (!int_arg(w[2], 1, 1000, &a)) return "bad partition count";
        err = topic_create(mc, w[1], (int)a);
    } else {
        return "unknown command";
    }
    return err ? rd_kafka_err2str(err) : NULL;
}

static void create_topic(rd_kafka_mock_cluster_t *mc, char *spec) {
    char *colon = strchr(spec, ':');
    long parts = 1;
    if (colon) {
        *colon = '\0';
        if (!int_arg(colon + 1, 1, 1000, &parts)) die(spec, "bad partition count");
    }
    rd_kafka_resp_err_t err = topic_create(mc, spec, (int)parts);
    if (err) die(spec, rd_kafka_err2str(err));
}

int main(int argc, char **argv) {
    char errstr[512], line[MAX_LINE];
    unsigned long seq = 0;

    signal(SIGPIPE, SIG_IGN);
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc) {
            if (!int_arg(argv[++i], 1, 16, &n_brokers)) die("--brokers", "not 1..16");
        } else if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc) {
            i++;                                        /* after the cluster exists */
        } else {
            fprintf(stderr, "usage: kafka_mock [--brokers N] [--topic NAME:PARTITIONS]...\n");
            return 2;
        }

    /* The rd_kafka_t only hosts the cluster; it never produces. */
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        die("conf", errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) die("rd_kafka_new", errstr);
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, (int)n_brokers);
    if (!mc) die("rd_kafka_mock_cluster_new", "failed (see the log above)");
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--topic") == 0) create_topic(mc, argv[++i]);

    printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);

    while (fgets(line, sizeof line, stdin)) {
        char *w[8];
        int n = 0;
        for (char *t = strtok(line, " \t\r\n"); t && n < 8; t = strtok(NULL, " \t\r\n"))
            w[n++] = t;
        if (n == 0) continue;
        seq++;
        if (n == 1 && strcmp(w[0], "quit") == 0) {
            printf("ok %lu quit\n", seq);
            fflush(stdout);
            break;
        }
        const char *why = run_command(mc, w, n);
        if (why) printf("error %lu %s: %s\n", seq, w[0], why);
        else printf("ok %lu %s\n", seq, w[0]);
        fflush(stdout);
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
