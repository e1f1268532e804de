// scale: the load side of two scale checks, run against any AMQP 0-9-1 broker on this machine.
//
//	scale idle   -uri URI -pid PID -n 10000   open N connections, one channel each, then idle
//	             (-consume: each with a consumer on its own queue bound to a fanout exchange, and
//	             after the idle period one message published to it must reach every one;
//	             -heartbeat: the interval the clients ask for; -sources: source addresses)
//	scale queues -uri URI -pid PID -n 100000  declare N queues and bind each with its own key
//	scale unacked -uri URI -pid PID -n 1000000 N messages held unacked by a consumer that
//	                                           never acks, requeued, then redelivered
//	scale storm  -uri URI -pid PID -parallel 50 -duration 20s  connections opened (with a
//	             channel) and closed as fast as the workers can (storm.go)
//
// Both read the broker's resident memory (VmRSS of /proc/PID/status) before and after and
// print one "result" line of key=value pairs that run.sh collects. Every loop is bounded by a
// count and a deadline: the tool stops by itself.
//
// Built with Debian's golang-github-rabbitmq-amqp091-go-dev, no module download:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o scale main.go
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// cpuSecs is the CPU time (user + system) the process has used so far.
func cpuSecs(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	// fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return float64(u+st) / 100 // USER_HZ
}

func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		fmt.Fprintf(os.Stderr, "scale: cannot read broker status: %v\n", err)
		os.Exit(1)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// settle samples the broker's RSS once a second for d and returns the last sample and the
// largest one (RabbitMQ's garbage collector and Warren's allocator both lag a little).
func settle(pid int, d time.Duration) (last, max int64) {
	end := time.Now().Add(d)
	for {
		last = rssKB(pid)
		if last > max {
			max = last
		}
		if !time.Now().Before(end) {
			return
		}
		time.Sleep(time.Second)
	}
}

func logf(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", a...)
}

// roundTrip sends body to a fresh server-named queue and reads it back, so both of the
// connection's directions have carried a message of that size before it goes idle.
func roundTrip(ch *amqp.Channel, body []byte) error {
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return err
	}
	if err = ch.Publish("", q.Name, false, false, amqp.Publishing{Body: body}); err != nil {
		return err
	}
	for tries := 0; tries < 100; tries++ {
		_, ok, err := ch.Get(q.Name, true)
		if err != nil {
			return err
		}
		if ok {
			_, err = ch.QueueDelete(q.Name, false, false, false)
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("message not back from %s", q.Name)
}

// consumeFanout gives the channel an exclusive queue bound to scale-fanout and a consumer
// that counts what it receives.
func consumeFanout(ch *amqp.Channel, received *int64) error {
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return err
	}
	if err = ch.QueueBind(q.Name, "", "scale-fanout", false, nil); err != nil {
		return err
	}
	d, err := ch.Consume(q.Name, "", true, false, false, false, nil)
	if err != nil {
		return err
	}
	go func() {
		for range d {
			atomic.AddInt64(received, 1)
		}
	}()
	return nil
}

func idle(args []string) {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	uri := fs.String("uri", "amqp://guest:guest@127.0.0.1:5672/", "broker URI")
	pid := fs.Int("pid", 0, "broker PID (for VmRSS)")
	n := fs.Int("n", 10000, "connections to open")
	par := fs.Int("parallel", 32, "connections being opened at once")
	hold := fs.Duration("settle", 15*time.Second, "idle time before the final RSS sample")
	deadline := fs.Duration("deadline", 300*time.Second, "give up opening connections after this")
	warm := fs.Int("warm", 0, "before idling, send a message of this many bytes through each connection and back (declare a queue, publish, basic.get, delete the queue)")
	consume := fs.Bool("consume", false, "each connection declares an exclusive queue bound to the fanout exchange scale-fanout and consumes from it (auto-ack); after the idle period one message is published there and must reach every consumer")
	heartbeat := fs.Duration("heartbeat", 10*time.Second, "heartbeat interval the clients ask for (amqp091-go's default: 10 s; RabbitMQ's server default: 60 s)")
	sources := fs.Int("sources", 1, "spread the connections over this many source addresses 127.1.x.y (one address has ~28,000 ephemeral ports)")
	fanoutWait := fs.Duration("fanout-wait", 60*time.Second, "with -consume: how long the fan-out message may take to reach every consumer")
	fs.Parse(args)
	var received int64
	dial := func(i int) (*amqp.Connection, error) {
		cfg := amqp.Config{Heartbeat: *heartbeat, Locale: "en_US"}
		if *sources > 1 {
			k := i % *sources
			src := &net.TCPAddr{IP: net.IPv4(127, 1, byte(k/250), byte(k%250+1))}
			d := net.Dialer{LocalAddr: src, Timeout: 30 * time.Second}
			cfg.Dial = func(network, addr string) (net.Conn, error) { return d.Dial(network, addr) }
		}
		return amqp.DialConfig(*uri, cfg)
	}
	if *consume {
		c, err := amqp.Dial(*uri)
		if err == nil {
			var ch *amqp.Channel
			if ch, err = c.Channel(); err == nil {
				err = ch.ExchangeDeclare("scale-fanout", "fanout", false, false, false, false, nil)
			}
			c.Close()
		}
		if err != nil {
			logf("idle: declaring the fanout exchange: %v", err)
			os.Exit(1)
		}
	}
	var body []byte
	if *warm > 0 {
		body = make([]byte, *warm)
	}

	before, _ := settle(*pid, 0)
	logf("idle: broker RSS before %d KB; opening %d connections", before, *n)
	cpu0, self0 := cpuSecs(*pid), cpuSecs(os.Getpid())
	conns := make([]*amqp.Connection, *n)
	chans := make([]*amqp.Channel, *n)
	var next, opened, failed int64
	var firstErr atomic.Value
	start := time.Now()
	stop := start.Add(*deadline)
	var wg sync.WaitGroup
	for w := 0; w < *par; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) && atomic.LoadInt64(&failed) < 100 {
				i := int(atomic.AddInt64(&next, 1) - 1)
				if i >= *n {
					return
				}
				c, err := dial(i)
				if err == nil {
					var ch *amqp.Channel
					if ch, err = c.Channel(); err == nil {
						if body != nil {
							err = roundTrip(ch, body)
						}
						if err == nil && *consume {
							err = consumeFanout(ch, &received)
						}
						if err == nil {
							conns[i], chans[i] = c, ch
							atomic.AddInt64(&opened, 1)
							continue
						}
					}
					c.Close()
				}
				atomic.AddInt64(&failed, 1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("connection %d: %v", i, err))
			}
		}()
	}
	wg.Wait()
	openSecs := time.Since(start).Seconds()
	cpuOpen, selfOpen := cpuSecs(*pid)-cpu0, cpuSecs(os.Getpid())-self0
	logf("idle: %d open, %d failed in %.1f s; idling %s", opened, failed, openSecs, *hold)
	if e := firstErr.Load(); e != nil {
		logf("idle: first error: %s", e)
	}
	// Connections that died while idling (heartbeat timeouts, broker limits) count as lost.
	cpu1 := cpuSecs(*pid)
	after, max := settle(*pid, *hold)
	idleCPU := (cpuSecs(*pid) - cpu1) / hold.Seconds() * 100
	alive := 0
	for _, c := range conns {
		if c != nil && !c.IsClosed() {
			alive++
		}
	}
	per := 0.0
	if alive > 0 {
		per = float64(after-before) / float64(alive)
	}
	// The fan-out: one message to every consumer, through connections that sat idle.
	fanoutSecs, delivered := 0.0, int64(0)
	if *consume {
		c, err := amqp.Dial(*uri)
		if err == nil {
			var ch *amqp.Channel
			if ch, err = c.Channel(); err == nil {
				t := time.Now()
				err = ch.Publish("scale-fanout", "", false, false, amqp.Publishing{Body: []byte("fan-out")})
				for err == nil && atomic.LoadInt64(&received) < int64(alive) && time.Since(t) < *fanoutWait {
					time.Sleep(10 * time.Millisecond)
				}
				fanoutSecs, delivered = time.Since(t).Seconds(), atomic.LoadInt64(&received)
			}
			c.Close()
		}
		if err != nil {
			logf("idle: fan-out: %v", err)
		}
		logf("idle: fan-out reached %d of %d consumers in %.2f s", delivered, alive, fanoutSecs)
	}
	fmt.Printf("result test=idle warm_bytes=%d consume=%v heartbeat_s=%.0f requested=%d opened=%d failed=%d alive=%d open_s=%.1f broker_cpu_open_s=%.1f tool_cpu_open_s=%.1f broker_cpu_idle_pct=%.1f idle_s=%.0f rss_before_kb=%d rss_after_kb=%d rss_max_kb=%d per_conn_kb=%.1f fanout_delivered=%d fanout_s=%.2f\n",
		*warm, *consume, heartbeat.Seconds(), *n, opened, failed, alive, openSecs, cpuOpen, selfOpen, idleCPU, hold.Seconds(), before, after, max, per, delivered, fanoutSecs)
	for i, c := range conns {
		if c != nil {
			chans[i].Close()
			c.Close()
		}
	}
}

func queues(args []string) {
	fs := flag.NewFlagSet("queues", flag.ExitOnError)
	uri := fs.String("uri", "amqp://guest:guest@127.0.0.1:5672/", "broker URI")
	pid := fs.Int("pid", 0, "broker PID (for VmRSS)")
	n := fs.Int("n", 100000, "queues to declare and bind")
	nconn := fs.Int("connections", 4, "connections")
	nch := fs.Int("channels", 8, "channels per connection, each a worker doing declare then bind")
	exchange := fs.String("exchange", "amq.direct", "exchange to bind to")
	prefix := fs.String("prefix", "scale-q-", "queue name prefix (the key is the queue name)")
	deadline := fs.Duration("deadline", 120*time.Second, "stop after this even if not done")
	hold := fs.Duration("settle", 5*time.Second, "wait before the final RSS sample")
	nowait := fs.Bool("nowait", false, "pipeline: declare and bind with nowait, one synchronous call per -sync-every queues per channel")
	syncEvery := fs.Int("sync-every", 500, "with -nowait: queues per channel between synchronous calls")
	fs.Parse(args)

	before, _ := settle(*pid, 0)
	logf("queues: broker RSS before %d KB; %d queues via %d connections x %d channels to %s",
		before, *n, *nconn, *nch, *exchange)
	var conns []*amqp.Connection
	var chans []*amqp.Channel
	for i := 0; i < *nconn; i++ {
		c, err := amqp.Dial(*uri)
		if err != nil {
			logf("queues: dial: %v", err)
			os.Exit(1)
		}
		conns = append(conns, c)
		for j := 0; j < *nch; j++ {
			ch, err := c.Channel()
			if err != nil {
				logf("queues: channel: %v", err)
				os.Exit(1)
			}
			chans = append(chans, ch)
		}
	}
	var next, done int64
	var firstErr atomic.Value
	cpu0, self0 := cpuSecs(*pid), cpuSecs(os.Getpid())
	lat := make([][]time.Duration, len(chans))
	start := time.Now()
	stop := start.Add(*deadline)
	var wg sync.WaitGroup
	// count records finished queues and logs progress with the broker's RSS every 10,000.
	count := func(k int64) {
		d := atomic.AddInt64(&done, k)
		if d/10000 != (d-k)/10000 {
			logf("queues: %d declared and bound (%.1f s, broker RSS %d KB)", d/10000*10000,
				time.Since(start).Seconds(), rssKB(*pid))
		}
	}
	for w, ch := range chans {
		wg.Add(1)
		go func(w int, ch *amqp.Channel) {
			defer wg.Done()
			pending := 0
			for time.Now().Before(stop) {
				i := int(atomic.AddInt64(&next, 1) - 1)
				if i >= *n {
					break // the pending nowait calls are synced below
				}
				name := *prefix + strconv.Itoa(i)
				t := time.Now()
				if _, err := ch.QueueDeclare(name, false, false, false, *nowait, nil); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Sprintf("declare %s: %v", name, err))
					return
				}
				if err := ch.QueueBind(name, name, *exchange, *nowait, nil); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Sprintf("bind %s: %v", name, err))
					return
				}
				if *nowait {
					// Bounds what is in flight and surfaces errors: the broker answers
					// in order, so this returns once everything before it is done.
					if pending++; pending < *syncEvery {
						continue
					}
					if _, err := ch.QueueDeclarePassive(name, false, false, false, false, nil); err != nil {
						firstErr.CompareAndSwap(nil, fmt.Sprintf("sync %s: %v", name, err))
						return
					}
					lat[w] = append(lat[w], time.Since(t))
					count(int64(pending))
					pending = 0
					continue
				}
				lat[w] = append(lat[w], time.Since(t))
				count(1)
			}
			if pending > 0 {
				if _, err := ch.QueueDeclarePassive(*prefix+"0", false, false, false, false, nil); err != nil {
					firstErr.CompareAndSwap(nil, fmt.Sprintf("final sync: %v", err))
					return
				}
				count(int64(pending))
			}
		}(w, ch)
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	cpu, self := cpuSecs(*pid)-cpu0, cpuSecs(os.Getpid())-self0
	if e := firstErr.Load(); e != nil {
		logf("queues: first error: %s", e)
	}
	after, max := settle(*pid, *hold)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	pct := percentiles(all)
	per := 0.0
	if done > 0 {
		per = float64(after-before) / float64(done)
	}
	fmt.Printf("result test=queues nowait=%v requested=%d done=%d complete=%v secs=%.2f rate_per_s=%.0f p50_ms=%.2f p99_ms=%.2f broker_cpu_s=%.1f tool_cpu_s=%.1f rss_before_kb=%d rss_after_kb=%d rss_max_kb=%d per_queue_kb=%.2f\n",
		*nowait, *n, done, done == int64(*n), secs, float64(done)/secs, pct(0.5), pct(0.99), cpu, self, before, after, max, per)
	for _, c := range conns {
		c.Close()
	}
}

// percentiles sorts the latencies and returns a function giving the p-th (0..1) in ms.
func percentiles(all []time.Duration) func(p float64) float64 {
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: scale idle|queues|unacked|storm [flags]  (scale idle -h for flags)")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "idle":
		idle(os.Args[2:])
	case "queues":
		queues(os.Args[2:])
	case "unacked":
		unacked(os.Args[2:])
	case "storm":
		storm(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "usage: scale idle|queues|unacked|storm [flags]")
		os.Exit(2)
	}
}

// publishConfirmed publishes n messages of size bytes to queue q with publisher confirms
// (a window of outstanding ones), so every message is in the queue when it returns.
func publishConfirmed(conn *amqp.Connection, q string, n, size int, persistent bool) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err = ch.Confirm(false); err != nil {
		return err
	}
	const window = 5000
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, window))
	mode := amqp.Transient
	if persistent {
		mode = amqp.Persistent
	}
	body := make([]byte, size)
	outstanding := 0
	for i := 0; i < n; i++ {
		copy(body, fmt.Sprintf("%012d", i))
		if err = ch.Publish("", q, false, false, amqp.Publishing{DeliveryMode: mode, Body: body}); err != nil {
			return err
		}
		outstanding++
		for outstanding >= window {
			c, ok := <-confirms
			if !ok {
				return fmt.Errorf("channel closed while waiting for confirms")
			}
			if !c.Ack {
				return fmt.Errorf("publish %d nacked", c.DeliveryTag)
			}
			outstanding--
		}
	}
	for outstanding > 0 {
		c, ok := <-confirms
		if !ok || !c.Ack {
			return fmt.Errorf("confirm missing or nacked")
		}
		outstanding--
	}
	return nil
}

// ready polls the queue until it has n ready messages (or the deadline passes).
func waitReady(conn *amqp.Connection, q string, n int, deadline time.Duration) (int, error) {
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	defer ch.Close()
	end := time.Now().Add(deadline)
	for {
		st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
		if err != nil {
			return 0, err
		}
		if st.Messages >= n || time.Now().After(end) {
			return st.Messages, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// drain consumes n messages with prefetch 1000, acking every 100th (multiple), and returns
// the rate and how many came marked redelivered.
func drain(uri, q string, n int) (rate float64, redelivered int, err error) {
	conn, err := amqp.Dial(uri)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, 0, err
	}
	if err = ch.Qos(1000, 0, false); err != nil {
		return 0, 0, err
	}
	msgs, err := ch.Consume(q, "drain", false, false, false, false, nil)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	timeout := time.NewTimer(time.Minute)
	for got := 0; got < n; {
		select {
		case d, ok := <-msgs:
			if !ok {
				return 0, 0, fmt.Errorf("consumer closed after %d", got)
			}
			got++
			if d.Redelivered {
				redelivered++
			}
			if got%100 == 0 || got == n {
				if err = d.Ack(true); err != nil {
					return 0, 0, err
				}
			}
			timeout.Reset(time.Minute)
		case <-timeout.C:
			return 0, 0, fmt.Errorf("drain stalled after %d of %d", got, n)
		}
	}
	rate = float64(n) / time.Since(start).Seconds()
	return rate, redelivered, nil
}

func unacked(args []string) {
	fs := flag.NewFlagSet("unacked", flag.ExitOnError)
	uri := fs.String("uri", "amqp://guest:guest@127.0.0.1:5672/%2f", "broker URI")
	pid := fs.Int("pid", 0, "broker process id (for RSS)")
	n := fs.Int("n", 1000000, "messages")
	size := fs.Int("size", 1024, "body bytes")
	persistent := fs.Bool("persistent", true, "publish persistent messages (delivery mode 2)")
	settleFor := fs.Duration("settle", 10*time.Second, "RSS sampling after each phase")
	ref := fs.Bool("reference-drain", true, "also publish N again and drain them as the normal drain rate")
	fs.Parse(args)
	if *pid == 0 {
		fmt.Fprintln(os.Stderr, "scale unacked: -pid is required")
		os.Exit(2)
	}
	fail := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "scale unacked: %s: %v\n", what, err)
		fmt.Printf("result test=unacked failed=%q\n", what)
		os.Exit(1)
	}
	conn, err := amqp.Dial(*uri)
	if err != nil {
		fail("connect", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		fail("channel", err)
	}
	q := "unacked-bench"
	if _, err = ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		fail("declare", err)
	}
	ch.Close()
	rssStart, _ := settle(*pid, 2*time.Second)
	logf("publishing %d x %d B (persistent=%v); broker RSS %d MB", *n, *size, *persistent, rssStart/1024)
	t0 := time.Now()
	if err = publishConfirmed(conn, q, *n, *size, *persistent); err != nil {
		fail("publish", err)
	}
	pubRate := float64(*n) / time.Since(t0).Seconds()
	rssReady, _ := settle(*pid, *settleFor)
	logf("published at %.0f/s; RSS with them ready %d MB", pubRate, rssReady/1024)

	// A consumer with unlimited prefetch that never acks.
	cconn, err := amqp.Dial(*uri)
	if err != nil {
		fail("consumer connect", err)
	}
	cch, err := cconn.Channel()
	if err != nil {
		fail("consumer channel", err)
	}
	msgs, err := cch.Consume(q, "never-acks", false, false, false, false, nil)
	if err != nil {
		fail("consume", err)
	}
	t0 = time.Now()
	timeout := time.NewTimer(time.Minute)
	for got := 0; got < *n; {
		select {
		case _, ok := <-msgs:
			if !ok {
				fail("unacked consume", fmt.Errorf("closed after %d", got))
			}
			got++
			timeout.Reset(time.Minute)
		case <-timeout.C:
			fail("unacked consume", fmt.Errorf("stalled after %d of %d", got, *n))
		}
	}
	deliverRate := float64(*n) / time.Since(t0).Seconds()
	rssUnacked, rssUnackedMax := settle(*pid, *settleFor)
	logf("all %d unacked (delivered at %.0f/s); RSS %d MB (max %d)", *n, deliverRate, rssUnacked/1024, rssUnackedMax/1024)

	// The consumer goes: everything is requeued.
	t0 = time.Now()
	cconn.Close()
	back, err := waitReady(conn, q, *n, 2*time.Minute)
	if err != nil {
		fail("requeue", err)
	}
	requeueSecs := time.Since(t0).Seconds()
	rssRequeued, rssRequeuedMax := settle(*pid, *settleFor)
	logf("%d requeued in %.1f s; RSS %d MB (max %d)", back, requeueSecs, rssRequeued/1024, rssRequeuedMax/1024)
	if back < *n {
		fail("requeue", fmt.Errorf("only %d of %d back", back, *n))
	}

	redeliverRate, redelivered, err := drain(*uri, q, *n)
	if err != nil {
		fail("redelivery drain", err)
	}
	rssAfter, _ := settle(*pid, 2*time.Second)
	logf("redelivered at %.0f/s (%d marked redelivered); RSS after %d MB", redeliverRate, redelivered, rssAfter/1024)

	drainRate := 0.0
	if *ref {
		if err = publishConfirmed(conn, q, *n, *size, *persistent); err != nil {
			fail("reference publish", err)
		}
		if drainRate, _, err = drain(*uri, q, *n); err != nil {
			fail("reference drain", err)
		}
		logf("reference drain (never delivered before) at %.0f/s", drainRate)
	}
	ratio := 0.0
	if drainRate > 0 {
		ratio = redeliverRate / drainRate
	}
	fmt.Printf("result test=unacked n=%d size=%d persistent=%v publish_rate=%.0f deliver_rate=%.0f rss_start_kb=%d rss_ready_kb=%d rss_unacked_kb=%d rss_unacked_max_kb=%d requeue_s=%.1f rss_requeued_kb=%d rss_requeued_max_kb=%d redeliver_rate=%.0f redelivered=%d drain_rate=%.0f redeliver_ratio=%.2f per_unacked_b=%.0f\n",
		*n, *size, *persistent, pubRate, deliverRate, rssStart, rssReady, rssUnacked, rssUnackedMax,
		requeueSecs, rssRequeued, rssRequeuedMax, redeliverRate, redelivered, drainRate, ratio,
		float64(rssUnacked-rssStart)*1024/float64(*n))
}
