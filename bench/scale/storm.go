package main

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// storm: connections opened, handshaken (a channel opened too) and closed as fast as
// -parallel workers can for -duration: the broker's connection churn rate, with its latency
// per connection and the broker's CPU for it.
func storm(args []string) {
	fs := flag.NewFlagSet("storm", flag.ExitOnError)
	uri := fs.String("uri", "amqp://guest:guest@127.0.0.1:5672/", "broker URI")
	pid := fs.Int("pid", 0, "broker PID (for CPU and VmRSS)")
	parallel := fs.Int("parallel", 50, "workers, each opening and closing connections one after another")
	duration := fs.Duration("duration", 20*time.Second, "how long to churn")
	fs.Parse(args)

	before, _ := settle(*pid, 0)
	cpu0 := cpuSecs(*pid)
	logf("storm: %d workers for %s against %s", *parallel, *duration, *uri)
	var done, failed int64
	var mu sync.Mutex
	var lat []time.Duration
	start := time.Now()
	end := start.Add(*duration)
	var wg sync.WaitGroup
	for w := 0; w < *parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(end) {
				t := time.Now()
				c, err := amqp.Dial(*uri)
				if err == nil {
					var ch *amqp.Channel
					if ch, err = c.Channel(); err == nil {
						ch.Close()
					}
					if cerr := c.Close(); err == nil {
						err = cerr
					}
				}
				if err != nil {
					if atomic.AddInt64(&failed, 1) <= 5 {
						logf("storm: %v", err)
					}
					continue
				}
				mine = append(mine, time.Since(t))
				atomic.AddInt64(&done, 1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	cpu := cpuSecs(*pid) - cpu0
	after, max := settle(*pid, 2*time.Second)
	pct := percentiles(lat)
	perConn := 0.0
	if done > 0 {
		perConn = cpu * 1e6 / float64(done)
	}
	fmt.Printf("result test=storm parallel=%d secs=%.1f done=%d failed=%d rate_per_s=%.0f p50_ms=%.2f p99_ms=%.2f broker_cpu_pct=%.0f broker_cpu_us_per_conn=%.0f rss_before_kb=%d rss_after_kb=%d rss_max_kb=%d\n",
		*parallel, secs, done, failed, float64(done)/secs, pct(0.5), pct(0.99), cpu/secs*100, perConn, before, after, max)
	if failed > 0 {
		os.Exit(1)
	}
}
