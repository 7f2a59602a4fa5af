# Optional: the audit bucket and the writer/auditor policies with Terraform
# (AWS provider >= 5). Same settings as `extproc-audit init-bucket` and
# docs/ISTIO.md's CLI steps. Replace the bucket name in the policy files, or
# template them, before use.

variable "bucket" {
  type    = string
  default = "example-audit-bucket"
}

variable "retention_days" {
  type    = number
  default = 365
}

resource "aws_s3_bucket" "audit" {
  bucket = var.bucket
  # Object Lock can only be enabled at creation; it also turns versioning on.
  object_lock_enabled = true
}

resource "aws_s3_bucket_versioning" "audit" {
  bucket = aws_s3_bucket.audit.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "audit" {
  bucket = aws_s3_bucket.audit.id
  rule {
    default_retention {
      # COMPLIANCE: nobody, the root account included, shortens or removes it.
      mode = "COMPLIANCE"
      days = var.retention_days
    }
  }
}

resource "aws_s3_bucket_public_access_block" "audit" {
  bucket                  = aws_s3_bucket.audit.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# Writers may write only their own log (docs/ISTIO.md, "IAM: one writer, one log").
# file(), which does not interpolate: the ${aws:PrincipalTag/...} policy variables must
# reach IAM as they are.
resource "aws_iam_policy" "writer" {
  # Shared topology: the StatefulSet's pods, log id = pod name (EKS Pod Identity tags).
  name   = "extproc-audit-writer"
  policy = file("${path.module}/writer-policy.json")
}

resource "aws_iam_policy" "writer_sidecar" {
  # Per-pod sidecar topology: log id = <namespace>.<pod name> (EKS Pod Identity tags).
  name   = "extproc-audit-writer-sidecar"
  policy = file("${path.module}/writer-policy-sidecar.json")
}

# The shared writer's role for EKS Pod Identity, and its association with the
# extproc-audit service account (set eks_cluster_name to create them). Pod
# Identity sets the session tags the policy uses; keep session tags enabled on
# the association (the default). IRSA fallback: writer-policy-irsa.json.
variable "eks_cluster_name" {
  type    = string
  default = ""
}

resource "aws_iam_role" "writer" {
  count              = var.eks_cluster_name == "" ? 0 : 1
  name               = "extproc-audit-writer"
  assume_role_policy = file("${path.module}/writer-trust-pod-identity.json")
}

resource "aws_iam_role_policy_attachment" "writer" {
  count      = var.eks_cluster_name == "" ? 0 : 1
  role       = aws_iam_role.writer[0].name
  policy_arn = aws_iam_policy.writer.arn
}

resource "aws_eks_pod_identity_association" "writer" {
  count           = var.eks_cluster_name == "" ? 0 : 1
  cluster_name    = var.eks_cluster_name
  namespace       = "extproc-audit"
  service_account = "extproc-audit"
  role_arn        = aws_iam_role.writer[0].arn
}

resource "aws_iam_policy" "auditor" {
  name   = "extproc-audit-auditor"
  policy = file("${path.module}/auditor-policy.json")
}
