# The secrets exist here; their values never do. Add them once with:
#   printf %s "$VALUE" | gcloud secrets versions add <secret id> --data-file=-
resource "google_secret_manager_secret" "secret" {
  for_each  = local.secrets
  project   = var.project
  secret_id = each.value
  labels    = { app = "lbtrain", env_var = lower(each.key) }
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_iam_member" "runtime" {
  for_each  = local.secrets
  project   = var.project
  secret_id = google_secret_manager_secret.secret[each.key].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.runtime.member
}
