// Benchmark fixture, not a product: the sync-airbnb worker operator written as a
// competent controller-runtime (Kubebuilder) user would, for tools/bench's
// side-by-side figures. One worker Deployment per active account of the
// accounts table, the same object as sync-airbnb-operator's rules render,
// rolled when the credentials fingerprint changes, deleted when the account
// is deactivated or soft-deleted.
//
// Two variants (PEER_VARIANT):
//
//	seed  the seed's design: every POLL_SECONDS (30) enqueue every account of
//	      the table; the reconciler reads the live Deployment with a GET
//	      (the manager's APIReader, no cache).
//	best  LISTEN sync_airbnb_accounts (the operator's NOTIFY trigger) feeds
//	      the work queue through a channel source; Deployments come from the
//	      manager's informer cache (a watch on them also enqueues their
//	      account); a full pass every RESYNC_INTERVAL_SECONDS enqueues every
//	      account and every cached worker (orphans of hard-deleted rows).
//
// Environment: DATABASE_URL, KUBECONFIG, NAMESPACE, WORKER_IMAGE, KUBE_QPS,
// KUBE_BURST (client-go's defaults 5/10 raised the way tools/bench raises
// the operator's), CONCURRENCY (MaxConcurrentReconciles, default 16),
// ACCOUNTS_TABLE (default airbnb.accounts).
package main

import (
	"context"
	"errors"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

const (
	namePrefix  = "sync-airbnb-worker-"
	appLabel    = "sync-airbnb-worker"
	fpAnnot     = "sync-airbnb.io/credentials-fingerprint"
	idAnnot     = "sync-airbnb.io/account-id"
	notifyChan  = "sync_airbnb_accounts"
	fieldOwner  = "sync-airbnb-peer-kubebuilder"
	fpTag       = "sync-airbnb/credentials/v2"
	workerPort  = 8000
	placeholder = "unused-legacy-placeholder"
)

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envNum(k string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(k), 64); err == nil {
		return v
	}
	return def
}

// fingerprint is lua/rules/fingerprint.lua's digest: length-prefixed pieces.
func fingerprint(id, generation, clientVersion, userAgent string) string {
	var b strings.Builder
	add := func(s string) { fmt.Fprintf(&b, "%d:%s,", len(s), s) }
	add(fpTag)
	add(id)
	add(generation)
	add("x_client_version")
	add(clientVersion)
	add("user_agent")
	add(userAgent)
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:])
}

type account struct {
	id, clientVersion, userAgent, generation string
	active                                   bool
}

// Reconciler: one request per account id (req.Name).
type Reconciler struct {
	client.Client
	reader    client.Reader // the cache (best) or the API server (seed)
	db        *pgxpool.Pool
	ns, image string
	query     string
}

func (r *Reconciler) load(ctx context.Context, id string) (*account, error) {
	a := account{id: id}
	err := r.db.QueryRow(ctx, r.query, id).Scan(&a.active, &a.clientVersion, &a.userAgent, &a.generation)
	if err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, nil
		}
		return nil, err
	}
	return &a, nil
}

func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	id := req.Name
	acct, err := r.load(ctx, id)
	if err != nil {
		return reconcile.Result{}, err // never delete on a database error; requeued with backoff
	}
	var live appsv1.Deployment
	key := types.NamespacedName{Namespace: r.ns, Name: namePrefix + id}
	exists := true
	if err := r.reader.Get(ctx, key, &live); err != nil {
		if !apierrors.IsNotFound(err) {
			return reconcile.Result{}, err
		}
		exists = false
	}
	switch {
	case acct != nil && acct.active && !exists:
		err = r.Create(ctx, r.deployment(acct), client.FieldOwner(fieldOwner))
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
	case acct != nil && acct.active:
		fp := fingerprint(acct.id, acct.generation, acct.clientVersion, acct.userAgent)
		if live.Spec.Template.Annotations[fpAnnot] != fp {
			patch := client.MergeFrom(live.DeepCopy())
			if live.Spec.Template.Annotations == nil {
				live.Spec.Template.Annotations = map[string]string{}
			}
			live.Spec.Template.Annotations[fpAnnot] = fp
			err = r.Patch(ctx, &live, patch, client.FieldOwner(fieldOwner))
		}
	case exists:
		err = r.Delete(ctx, &live, client.PropagationPolicy(metav1.DeletePropagationBackground))
		if apierrors.IsNotFound(err) {
			err = nil
		}
	}
	return reconcile.Result{}, err
}

func probe(path string, period, timeout, failures int32) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(workerPort)}},
		PeriodSeconds:    period,
		TimeoutSeconds:   timeout,
		FailureThreshold: failures,
	}
}

func secretEnv(name, secret, key string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: key}}}
}

// deployment: the object lua/rules/deployment.lua renders (the bench's ids
// are valid DNS labels, so the name and labels are the plain forms).
func (r *Reconciler) deployment(a *account) *appsv1.Deployment {
	name := namePrefix + a.id
	labels := func() map[string]string {
		return map[string]string{"app": appLabel, "account-id": a.id,
			"app.kubernetes.io/name": appLabel, "app.kubernetes.io/instance": name,
			"app.kubernetes.io/managed-by": "sync-airbnb-operator", "app.kubernetes.io/part-of": "sync-airbnb"}
	}
	q := resource.MustParse
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: r.ns, Labels: labels(),
			Annotations: map[string]string{idAnnot: a.id}},
		Spec: appsv1.DeploymentSpec{
			Replicas:             ptr.To[int32](1),
			Strategy:             appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			RevisionHistoryLimit: ptr.To[int32](2),
			Selector:             &metav1.LabelSelector{MatchLabels: map[string]string{"app": appLabel, "account-id": a.id}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels(), Annotations: map[string]string{
					fpAnnot: fingerprint(a.id, a.generation, a.clientVersion, a.userAgent)}},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: ptr.To[int64](330),
					AutomountServiceAccountToken:  ptr.To(false),
					SecurityContext: &corev1.PodSecurityContext{SeccompProfile: &corev1.SeccompProfile{
						Type: corev1.SeccompProfileTypeRuntimeDefault}},
					Containers: []corev1.Container{{
						Name:    "worker",
						Image:   r.image,
						Command: []string{"uvicorn", "sync_airbnb.main:app", "--host", "0.0.0.0", "--port", "8000"},
						Env: []corev1.EnvVar{
							{Name: "MODE", Value: "worker"},
							{Name: "ACCOUNT_ID", Value: a.id},
							secretEnv("DATABASE_URL", "sync-airbnb-db", "url"),
							secretEnv("AIRBNB_API_KEY", "sync-airbnb-api", "api-key"),
							{Name: "AIRBNB_COOKIE", Value: placeholder},
							{Name: "X_CLIENT_VERSION", Value: placeholder},
							{Name: "PGAPPNAME", Value: "sync-airbnb-worker"},
						},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: workerPort}},
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceMemory: q("512Mi"), corev1.ResourceCPU: q("250m")},
							Limits:   corev1.ResourceList{corev1.ResourceMemory: q("1Gi"), corev1.ResourceCPU: q("500m")},
						},
						StartupProbe:   probe("/health", 5, 5, 24),
						ReadinessProbe: probe("/health/ready", 10, 5, 3),
						LivenessProbe:  probe("/health", 30, 5, 3),
						SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false),
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
					}},
				},
			},
		},
	}
}

// allAccounts feeds every account id (and, in the best variant, every cached
// worker, so that a hard-deleted row's worker goes too) into the queue.
type fullPass struct {
	r      *Reconciler
	cached bool
	period time.Duration
	out    chan<- event.GenericEvent
}

func (f *fullPass) enqueue(id string) {
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: f.r.ns, Name: id}}
	f.out <- event.GenericEvent{Object: d}
}

func (f *fullPass) Start(ctx context.Context) error {
	table := env("ACCOUNTS_TABLE", "airbnb.accounts")
	t := time.NewTicker(f.period)
	defer t.Stop()
	for {
		seen := map[string]bool{}
		rows, err := f.r.db.Query(ctx, "SELECT account_id FROM "+table)
		if err == nil {
			for rows.Next() {
				var id string
				if rows.Scan(&id) == nil {
					seen[id] = true
					f.enqueue(id)
				}
			}
			rows.Close()
		}
		if err != nil {
			ctrl.Log.Error(err, "full pass: accounts query")
		}
		if f.cached {
			var list appsv1.DeploymentList
			if err := f.r.reader.List(ctx, &list, client.InNamespace(f.r.ns),
				client.MatchingLabels{"app": appLabel}); err == nil {
				for i := range list.Items {
					if id := list.Items[i].Labels["account-id"]; !seen[id] {
						f.enqueue(id)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// listen: LISTEN/NOTIFY into the work queue. A dropped connection is
// re-opened and followed by enqueuing every account (what a missed
// notification may have hidden).
type listen struct {
	f *fullPass
}

func (l *listen) Start(ctx context.Context) error {
	for ctx.Err() == nil {
		conn, err := l.f.r.db.Acquire(ctx)
		if err != nil {
			time.Sleep(time.Second)
			continue
		}
		_, err = conn.Exec(ctx, "LISTEN "+notifyChan)
		for err == nil {
			n, werr := conn.Conn().WaitForNotification(ctx)
			if werr != nil {
				err = werr
				break
			}
			if n.Payload != "*" {
				l.f.enqueue(n.Payload)
			}
		}
		conn.Release()
		if ctx.Err() == nil {
			ctrl.Log.Error(err, "listen: connection lost; reconnecting")
			time.Sleep(time.Second)
		}
	}
	return nil
}

func main() {
	ctrl.SetLogger(zap.New(zap.UseDevMode(false)))
	variant := env("PEER_VARIANT", "best")
	ns := env("NAMESPACE", "sync-airbnb")
	cfg := ctrl.GetConfigOrDie()
	cfg.QPS = float32(envNum("KUBE_QPS", 5))
	cfg.Burst = int(envNum("KUBE_BURST", 10))
	ctx := ctrl.SetupSignalHandler()

	conc := int(envNum("CONCURRENCY", 16))
	pcfg, err := pgxpool.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "database:", err)
		os.Exit(1)
	}
	pcfg.MaxConns = int32(conc + 2) // the reconcilers, the full pass and the listener
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "database:", err)
		os.Exit(1)
	}

	opts := ctrl.Options{
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		LeaderElection:         false,
	}
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		os.Exit(1)
	}
	table := env("ACCOUNTS_TABLE", "airbnb.accounts")
	r := &Reconciler{Client: mgr.GetClient(), db: pool, ns: ns, image: env("WORKER_IMAGE", "sync-airbnb:0.1.0"),
		query: "SELECT a.is_active AND a.deleted_at IS NULL, a.x_client_version, a.user_agent," +
			" coalesce(g.generation, 0)::text FROM " + table + " a LEFT JOIN sync_airbnb_operator.credentials_generation g" +
			" ON g.account_key = sha256(convert_to(a.account_id::text, 'UTF8')) WHERE a.account_id = $1"}
	events := make(chan event.GenericEvent, 1024)
	toRequest := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		if id, ok := o.GetLabels()["account-id"]; ok { // a worker Deployment from the informer
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ns, Name: id}}}
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ns, Name: o.GetName()}}}
	})
	b := ctrl.NewControllerManagedBy(mgr).Named("accounts").
		WithOptions(controller.Options{MaxConcurrentReconciles: conc}).
		WatchesRawSource(source.Channel(events, toRequest))
	var period time.Duration
	if variant == "seed" {
		r.reader = mgr.GetAPIReader()
		period = time.Duration(envNum("POLL_SECONDS", 30) * float64(time.Second))
	} else {
		r.reader = mgr.GetClient() // reads from the informer cache
		b = b.Watches(&appsv1.Deployment{}, toRequest)
		period = time.Duration(envNum("RESYNC_INTERVAL_SECONDS", 30) * float64(time.Second))
	}
	if err := b.Complete(r); err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(1)
	}
	fp := &fullPass{r: r, cached: variant != "seed", period: period, out: events}
	runnables := []manager.Runnable{fp}
	if variant != "seed" {
		runnables = append(runnables, &listen{f: fp})
	}
	for _, run := range runnables {
		if err := mgr.Add(run); err != nil {
			fmt.Fprintln(os.Stderr, "runnable:", err)
			os.Exit(1)
		}
	}
	if err := mgr.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		os.Exit(1)
	}
}
