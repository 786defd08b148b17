# Cloud Run services and functions (as containers built by cloudbuild.yaml). All keep no state in
# memory: Firestore, Pub/Sub and the artifact bucket hold it. Env names are lbtrain.config fields.

# Ingress: Labelbox (GET /models, POST /model_run), REST API (/runs…), push endpoints of the
# runs and dead-letter topics. Public: Labelbox signs its requests, push requests carry OIDC.
#
# Push authentication (lbtrain/pushauth.py): Pub/Sub and Cloud Scheduler sign as the invoker
# (PUSH_SERVICE_ACCOUNT) with the receiving service's custom audience (PUSH_AUDIENCE). Private
# services run PUSH_AUTH=cloudrun-iam: Cloud Run IAM has verified the token and forwards it with the
# signature replaced by SIGNATURE_REMOVED_BY_GOOGLE, so re-verifying it would refuse every push;
# the app checks the claims instead. The public ingress runs PUSH_AUTH=oidc and verifies signatures.
resource "google_cloud_run_v2_service" "ingress" {
  project             = var.project
  name                = "${var.deployment_name}-ingress"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false
  custom_audiences    = ["${local.audience_prefix}/ingress"]

  template {
    service_account                  = google_service_account.ingress.email
    max_instance_request_concurrency = 8
    timeout                          = "60s"
    scaling {
      min_instance_count = var.ingress_min_instances
      max_instance_count = 20
    }
    containers {
      image = local.images.ingress
      resources {
        limits   = { cpu = "1", memory = "512Mi" }
        cpu_idle = true
      }
      dynamic "env" {
        for_each = { for k, v in local.common_env : k => v if v != "" }
        content {
          name  = env.key
          value = env.value
        }
      }
      # Public (allUsers may invoke it), so nothing has checked a push token before the app: it
      # verifies Google's signature itself, then the audience and the invoker's identity.
      env {
        name  = "PUSH_AUTH"
        value = "oidc"
      }
      env {
        name  = "PUSH_AUDIENCE"
        value = "${local.audience_prefix}/ingress"
      }
      env {
        name  = "PUSH_SERVICE_ACCOUNT"
        value = google_service_account.invoker.email
      }
      dynamic "env" {
        for_each = toset(local.service_secrets.ingress)
        content {
          name = env.value
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.secret[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }
  depends_on = [google_secret_manager_secret_iam_member.service, google_project_service.apis]
  lifecycle {
    ignore_changes = [client, client_version]
  }
}

# One launcher per stage (STAGE): push endpoint of {dep}-step-<stage>; launches Vertex AI jobs.
resource "google_cloud_run_v2_service" "launcher" {
  for_each            = toset(local.stages)
  project             = var.project
  name                = "${var.deployment_name}-launcher-${each.key}"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false
  custom_audiences    = ["${local.audience_prefix}/launcher-${each.key}"]

  template {
    service_account                  = google_service_account.launcher.email
    max_instance_request_concurrency = 8
    timeout                          = "120s"
    scaling {
      max_instance_count = 10
    }
    containers {
      image = local.images.launcher
      resources {
        limits   = { cpu = "1", memory = "1Gi" }
        cpu_idle = true
      }
      env {
        name  = "STAGE"
        value = each.key
      }
      dynamic "env" {
        for_each = { for k, v in local.common_env : k => v if v != "" }
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" {
        for_each = { for k, v in local.launcher_env : k => v if v != "" }
        content {
          name  = env.key
          value = env.value
        }
      }
      # Private: Cloud Run IAM verifies the push token (run.invoker, iam.tf) and forwards it with its
      # signature removed; the app checks the forwarded claims (invoker, audience, expiry).
      env {
        name  = "PUSH_AUTH"
        value = "cloudrun-iam"
      }
      env {
        name  = "PUSH_AUDIENCE"
        value = "${local.audience_prefix}/launcher-${each.key}"
      }
      env {
        name  = "PUSH_SERVICE_ACCOUNT"
        value = google_service_account.invoker.email
      }
      dynamic "env" {
        for_each = toset(local.service_secrets.launcher)
        content {
          name = env.value
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.secret[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }
  depends_on = [google_secret_manager_secret_iam_member.service, google_service_account_iam_member.launcher_acts_as_jobs]
  lifecycle {
    ignore_changes = [client, client_version]
  }
}

# Job events (functions/job_events, a CloudEvent function): Pub/Sub pushes {dep}-job-events here
# (functions-framework turns the push into a CloudEvent); a job ended → next stage or end the run.
resource "google_cloud_run_v2_service" "job_events" {
  project             = var.project
  name                = "${var.deployment_name}-job-events"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false
  custom_audiences    = ["${local.audience_prefix}/job-events"]

  template {
    service_account                  = google_service_account.job_events.email
    max_instance_request_concurrency = 8
    timeout                          = "120s"
    scaling {
      max_instance_count = 10
    }
    containers {
      image = local.images.job_events
      resources {
        limits   = { cpu = "1", memory = "1Gi" }
        cpu_idle = true
      }
      dynamic "env" {
        for_each = { for k, v in local.common_env : k => v if v != "" }
        content {
          name  = env.key
          value = env.value
        }
      }
      # Private: Cloud Run IAM verifies the push token (run.invoker, iam.tf) and forwards it with its
      # signature removed; the app checks the forwarded claims (invoker, audience, expiry).
      env {
        name  = "PUSH_AUTH"
        value = "cloudrun-iam"
      }
      env {
        name  = "PUSH_AUDIENCE"
        value = "${local.audience_prefix}/job-events"
      }
      env {
        name  = "PUSH_SERVICE_ACCOUNT"
        value = google_service_account.invoker.email
      }
      dynamic "env" {
        for_each = toset(local.service_secrets.job_events)
        content {
          name = env.value
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.secret[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
    }
  }
  depends_on = [google_secret_manager_secret_iam_member.service, google_project_service.apis]
  lifecycle {
    ignore_changes = [client, client_version]
  }
}

# Reconciler (functions/reconciler, HTTP): called by Cloud Scheduler; re-drives lost steps.
resource "google_cloud_run_v2_service" "reconciler" {
  project             = var.project
  name                = "${var.deployment_name}-reconciler"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = false
  custom_audiences    = ["${local.audience_prefix}/reconciler"]

  template {
    service_account                  = google_service_account.reconciler.email
    max_instance_request_concurrency = 1
    timeout                          = "300s"
    scaling {
      max_instance_count = 1
    }
    containers {
      image = local.images.reconciler
      resources {
        limits   = { cpu = "1", memory = "1Gi" }
        cpu_idle = true
      }
      dynamic "env" {
        for_each = { for k, v in local.common_env : k => v if v != "" }
        content {
          name  = env.key
          value = env.value
        }
      }
      # Private: Cloud Run IAM verifies the push token (run.invoker, iam.tf) and forwards it with its
      # signature removed; the app checks the forwarded claims (invoker, audience, expiry).
      env {
        name  = "PUSH_AUTH"
        value = "cloudrun-iam"
      }
      env {
        name  = "PUSH_AUDIENCE"
        value = "${local.audience_prefix}/reconciler"
      }
      env {
        name  = "PUSH_SERVICE_ACCOUNT"
        value = google_service_account.invoker.email
      }
      dynamic "env" {
        for_each = toset(local.service_secrets.reconciler)
        content {
          name = env.value
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.secret[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
    }
  }
  depends_on = [google_secret_manager_secret_iam_member.service, google_project_service.apis]
  lifecycle {
    ignore_changes = [client, client_version]
  }
}

# Dashboard: reads Firestore; actions need API_TOKEN. IAM-protected (var.dashboard_invokers, or
# `gcloud run services proxy`). Off with var.deploy_dashboard = false.
resource "google_cloud_run_v2_service" "dashboard" {
  count               = var.deploy_dashboard ? 1 : 0
  project             = var.project
  name                = "${var.deployment_name}-dashboard"
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = false

  template {
    service_account                  = google_service_account.dashboard.email
    max_instance_request_concurrency = 8
    timeout                          = "60s"
    scaling {
      max_instance_count = 3
    }
    containers {
      image = local.images.dashboard
      resources {
        limits   = { cpu = "1", memory = "512Mi" }
        cpu_idle = true
      }
      dynamic "env" {
        for_each = { for k, v in local.common_env : k => v if v != "" }
        content {
          name  = env.key
          value = env.value
        }
      }
      dynamic "env" {
        for_each = toset(local.service_secrets.dashboard)
        content {
          name = env.value
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.secret[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
    }
  }
  depends_on = [google_secret_manager_secret_iam_member.service, google_project_service.apis]
  lifecycle {
    ignore_changes = [client, client_version]
  }
}
