variable "project" {
  description = "Google Cloud project id (GOOGLE_CLOUD_PROJECT of every service)."
  type        = string
}

variable "region" {
  description = "Region of Cloud Run, Vertex AI jobs, Artifact Registry, the bucket and the scheduler."
  type        = string
  default     = "us-central1"
}

variable "deployment_name" {
  description = "DEPLOYMENT_NAME: prefix of topics, subscriptions, services and job names (several deployments per project)."
  type        = string
  default     = "prod"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.deployment_name))
    error_message = "deployment_name: lowercase letters, digits and '-', starting with a letter, at most 20 characters (Cloud Run and Vertex job names derive from it)."
  }
}

variable "image_tag" {
  description = "Tag of the images cloudbuild.yaml pushed (its COMMIT_SHA)."
  type        = string
}

variable "image_registry" {
  description = "Registry path of the images; empty means the Artifact Registry repository below (cloudbuild.yaml's _REPO)."
  type        = string
  default     = ""
}

variable "artifact_registry_repository" {
  description = "Artifact Registry (Docker) repository id cloudbuild.yaml pushes to."
  type        = string
  default     = "lbtrain"
}

variable "artifact_bucket" {
  description = "GCS bucket for ARTIFACT_ROOT; empty means {project}-lbtrain-artifacts (cloudbuild.yaml's _ARTIFACT_ROOT)."
  type        = string
  default     = ""
}

variable "artifact_retention_days" {
  description = "Objects under runs/ (datasets, models, predictions) are deleted after this many days; 0 keeps them. A deployed model is served from its run's artifacts: keep them longer than a model stays deployed."
  type        = number
  default     = 0
}

variable "labelbox_api_key_secret_id" {
  description = "Secret Manager secret holding LABELBOX_API_KEY (the value is added with gcloud, never in Terraform)."
  type        = string
  default     = "lbtrain-labelbox-api-key"
}

variable "labelbox_webhook_secret_secret_id" {
  description = "Secret Manager secret holding LABELBOX_WEBHOOK_SECRET."
  type        = string
  default     = "lbtrain-labelbox-webhook-secret"
}

variable "api_token_secret_id" {
  description = "Secret Manager secret holding API_TOKEN (REST API and dashboard actions)."
  type        = string
  default     = "lbtrain-api-token"
}

variable "ingress_service_account_id" {
  description = "Account id (6-30 characters) of the service account the ingress run(s) as."
  type        = string
  default     = "lbtrain-ingress"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.ingress_service_account_id))
    error_message = "A service account id is 6-30 characters: lowercase letters, digits and hyphens."
  }
}

variable "launcher_service_account_id" {
  description = "Account id (6-30 characters) of the service account the launchers (all stages) run(s) as."
  type        = string
  default     = "lbtrain-launcher"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.launcher_service_account_id))
    error_message = "A service account id is 6-30 characters: lowercase letters, digits and hyphens."
  }
}

variable "job_events_service_account_id" {
  description = "Account id (6-30 characters) of the service account the job-events function run(s) as."
  type        = string
  default     = "lbtrain-job-events"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.job_events_service_account_id))
    error_message = "A service account id is 6-30 characters: lowercase letters, digits and hyphens."
  }
}

variable "reconciler_service_account_id" {
  description = "Account id (6-30 characters) of the service account the reconciler run(s) as."
  type        = string
  default     = "lbtrain-reconciler"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.reconciler_service_account_id))
    error_message = "A service account id is 6-30 characters: lowercase letters, digits and hyphens."
  }
}

variable "dashboard_service_account_id" {
  description = "Account id (6-30 characters) of the service account the dashboard run(s) as."
  type        = string
  default     = "lbtrain-dashboard"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.dashboard_service_account_id))
    error_message = "A service account id is 6-30 characters: lowercase letters, digits and hyphens."
  }
}

variable "jobs_service_account_id" {
  description = "Account id of the service account Vertex AI jobs run as (JOB_SERVICE_ACCOUNT)."
  type        = string
  default     = "lbtrain-jobs"
}

variable "invoker_service_account_id" {
  description = "Account id of the identity Pub/Sub push and Cloud Scheduler use to call the private services (OIDC)."
  type        = string
  default     = "lbtrain-invoker"
}

variable "labelbox_backend" {
  description = "LABELBOX_BACKEND of the cloud services: sdk (real Labelbox) or file."
  type        = string
  default     = "sdk"
  validation {
    condition     = contains(["sdk", "file"], var.labelbox_backend)
    error_message = "labelbox_backend must be sdk or file."
  }
}

variable "job_backend" {
  description = "JOB_BACKEND: vertex (every stage a Vertex AI CustomJob) or cloudrun (Cloud Run jobs; Vertex only for stages with a GPU or longer than 24 h). See the README's cost table."
  type        = string
  default     = "vertex"
  validation {
    condition     = contains(["vertex", "cloudrun"], var.job_backend)
    error_message = "job_backend must be vertex or cloudrun."
  }
}

variable "stage_backends" {
  description = "STAGE_BACKENDS: JSON, glob model_type/stage -> local|vertex|cloudrun, the most specific pattern wins (lbtrain/adapters/dispatch_backend.py); empty: job_backend decides."
  type        = string
  default     = ""
}

variable "serving_backends" {
  description = "SERVING_BACKENDS: JSON, model type glob -> vertex|cloudrun: where the deploy stage serves the champion (jobs/cloudrun_deploy.py); empty: vertex."
  type        = string
  default     = ""
}

variable "job_machines" {
  description = "JOB_MACHINES: JSON machine config per model type / stage for Vertex jobs (see lbtrain/adapters/vertex_backend.py); empty uses the defaults."
  type        = string
  default     = ""
}

variable "model_options" {
  description = "MODEL_OPTIONS: JSON, per model type custom training or AutoML Image and its budget (lbtrain/model_options.py); empty uses the defaults."
  type        = string
  default     = ""
}

variable "serving_machine" {
  description = "SERVING_MACHINE: machine type of the Vertex endpoint a deployed model is served from."
  type        = string
  default     = "n1-standard-2"
}

variable "min_examples" {
  description = "LBTRAIN_MIN_EXAMPLES, e.g. train=5,validation=1,test=1; empty uses the defaults."
  type        = string
  default     = ""
}

variable "max_delivery_attempts" {
  description = "Deliveries of a push message before it goes to the dead-letter topic (as lbtrain.adapters.pubsub_bus.topology)."
  type        = number
  default     = 50
  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "Pub/Sub accepts 5 to 100 delivery attempts."
  }
}

variable "max_active_runs" {
  description = "Admission: at most this many active runs in the deployment; later runs wait QUEUED (0: no limit)."
  type        = number
  default     = 0
  validation {
    condition     = var.max_active_runs >= 0 && floor(var.max_active_runs) == var.max_active_runs
    error_message = "max_active_runs must be a whole number >= 0."
  }
}

variable "max_active_runs_per_type" {
  description = "Admission per model type: \"\" (no limit), a number for every type, or JSON {\"bounding_box\": 1, \"*\": 4}."
  type        = string
  default     = ""
}

variable "monthly_node_hours" {
  description = "Admission: node-hours of finished jobs per calendar month (UTC) after which new runs wait (0: no budget)."
  type        = number
  default     = 0
  validation {
    condition     = var.monthly_node_hours >= 0
    error_message = "monthly_node_hours must be >= 0."
  }
}

variable "reconcile_schedule" {
  description = "Cron schedule (UTC) of the reconciler."
  type        = string
  default     = "*/5 * * * *"
}

variable "firestore_location" {
  description = "Location of the Firestore database (a multi-region like nam5 / eur3, or a region)."
  type        = string
  default     = "nam5"
}

variable "create_firestore_database" {
  description = "Create the project's (default) Firestore database in native mode; false when it already exists."
  type        = bool
  default     = true
}

variable "ingress_min_instances" {
  description = "Warm ingress instances (webhook latency vs. cost)."
  type        = number
  default     = 0
}

variable "deploy_dashboard" {
  description = "Deploy the dashboard service (services/dashboard, built by cloudbuild.yaml)."
  type        = bool
  default     = true
}

variable "dashboard_invokers" {
  description = "IAM members allowed to open the dashboard (e.g. user:alice@example.com, group:ml@example.com)."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for m in var.dashboard_invokers : !contains(["allusers", "allauthenticatedusers"], lower(trimspace(m)))])
    error_message = "dashboard_invokers: allUsers and allAuthenticatedUsers would open the dashboard (runs, Labelbox data) to anyone; name users, groups or domains."
  }
}

variable "media_buckets" {
  description = "Buckets outside lbtrain's own whose gs:// data rows the jobs read (Labelbox data rows hosted in your GCS). The jobs' account gets read-only access to each; nothing else does."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for b in var.media_buckets : can(regex("^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$", b))])
    error_message = "media_buckets: bucket names only (no gs:// prefix, no path)."
  }
}

variable "max_attempts" {
  description = "Automatic retries: attempts per stage, the first included, for failures of the infrastructure (1: no automatic retry)."
  type        = number
  default     = 3
  validation {
    condition     = var.max_attempts >= 1 && floor(var.max_attempts) == var.max_attempts
    error_message = "max_attempts must be a whole number >= 1."
  }
}

variable "retry_base_seconds" {
  description = "Automatic retries: the back-off before the n-th retry is min(cap, base * 2^(n-1)) seconds, 50-100 % of it at random."
  type        = number
  default     = 30
  validation {
    condition     = var.retry_base_seconds > 0
    error_message = "retry_base_seconds must be > 0."
  }
}

variable "retry_cap_seconds" {
  description = "Automatic retries: the longest back-off, in seconds."
  type        = number
  default     = 600
  validation {
    condition     = var.retry_cap_seconds > 0
    error_message = "retry_cap_seconds must be > 0."
  }
}
